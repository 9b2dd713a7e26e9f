"""Data errors give advice that holds for the command the user ran.

`vichat train --data FILE` prepares FILE itself (:func:`vichat.train.data.ensure_prepared` calls
:func:`vichat.data.prepare.prepare`), and train has neither --skip-invalid nor --limit, nor a mixture
named after the file: the messages must not send its users to flags it lacks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vichat.cli import main
from vichat.data.loading import load
from vichat.data.prepare import prepare
from vichat.plugins import get_registry
from vichat.records import InvalidRecordError, VichatError


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _train_prepares(data: Path, out: Path) -> Path:
    """What `vichat train --data FILE` does with FILE before anything is loaded."""
    from vichat.train.data import ensure_prepared

    return ensure_prepared(str(data), out, seed=42, template="chat", registry=get_registry())


@pytest.fixture
def bad(tmp_path) -> Path:
    return _write(tmp_path / "bad.jsonl", [{"instruction": "Một?", "output": "Một."}, {"instruction": "Hai?"}])


def test_invalid_record_advice_holds_for_train(bad, tmp_path):
    with pytest.raises(InvalidRecordError) as err:
        _train_prepares(bad, tmp_path / "run")
    message = str(err.value)
    assert message.startswith(f"{bad}:2: missing 'output'")
    assert "pass --skip-invalid" not in message  # vichat train has no such flag
    assert "fix or remove the record" in message and "`vichat data prepare --skip-invalid" in message
    assert "vichat train --data DIR" in message


def test_invalid_record_advice_holds_for_data_prepare(bad, tmp_path):
    result = CliRunner().invoke(main, ["data", "prepare", "--dataset", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert f"{bad}:2: missing 'output'" in result.stderr and "--skip-invalid" in result.stderr


def test_the_caller_gives_the_advice(bad, tmp_path):
    with pytest.raises(InvalidRecordError, match=r"missing 'output'.*\(ask the data team\)$"):
        load(str(bad), invalid_hint="ask the data team")
    with pytest.raises(InvalidRecordError, match=r"\(see the runbook\)$") as err:
        prepare(tmp_path / "o", datasets=[str(bad)], invalid_hint="see the runbook", registry=get_registry())
    assert err.value.location == f"{bad}:2" and "missing 'output'" in err.value.problem
    with pytest.raises(InvalidRecordError, match="pass --skip-invalid"):  # load's own default: show / stats have it
        load(str(bad))


def test_empty_file_is_named_not_called_a_mixture(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(VichatError) as err:
        _train_prepares(empty, tmp_path / "run")
    message = str(err.value)
    assert message.startswith(f"{empty}: no records to use: it holds no records"), message
    assert "mixture" not in message and "--limit" not in message


def test_file_of_invalid_records_says_so(tmp_path):
    path = _write(tmp_path / "blank.jsonl", [{"instruction": "Một?", "output": " "}])
    with pytest.raises(VichatError, match=rf"^{path}: no records to use: all 1 records are invalid .*empty 'output'"):
        prepare(tmp_path / "o", datasets=[str(path)], skip_invalid=True, registry=get_registry())


def test_named_mixture_names_the_source_and_the_limit(tmp_path):
    with pytest.raises(VichatError) as err:
        prepare(tmp_path / "o", mixture="sample-chat", limits={"alpaca": 0}, registry=get_registry())
    message = str(err.value)
    assert message.startswith("mixture 'sample-chat' has no records to write: source 'alpaca'")
    assert "--limit alpaca=0" in message
