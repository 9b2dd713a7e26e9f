"""Mixtures (limits, seeds, source overrides, cross-source duplicates) and `prepare` output."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from vichat.data import mixtures
from vichat.data import prepare as preparing
from vichat.data.mixtures import MIXTURES, adhoc_mixture, parse_assignments, parse_limits
from vichat.data.prepare import parse_val_size, read_manifest, validation_count
from vichat.plugins import get_registry
from vichat.records import Record, VichatError


def build_mixture(mixture, **kw):
    """As the CLI calls it: dataset names are looked up in the plugin registry."""
    return mixtures.build_mixture(mixture, **{"registry": get_registry(), **kw})


def prepare(out, **kw):
    return preparing.prepare(out, **{"registry": get_registry(), **kw})


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def files(tmp_path):
    general = _write(tmp_path / "general.jsonl",
                     [{"prompt": f"Câu hỏi chung số {i}?", "response": f"Trả lời chung {i}."} for i in range(40)])
    medical = _write(tmp_path / "medical.json",
                     [{"instruction": "If you are a doctor, please answer the medical questions based on the patient's description.",
                       "input": f"Bác sĩ ơi, tôi bị đau {i} ngày rồi.", "output": f"Bạn nên đi khám {i}."} for i in range(25)]
                     + [{"instruction": "Câu hỏi chung số 3?", "input": "", "output": "Trả lời chung 3."}])  # dup of general
    return general, medical


def test_paper_mixtures_are_data():
    assert MIXTURES["chat"].keys() == ["alpaca", "gpt4all"] and MIXTURES["chat"].template == "chat"
    assert MIXTURES["doctor"].keys() == ["alpaca", "chatdoctor"] and MIXTURES["doctor"].template == "doctor"
    assert {s.dataset for s in MIXTURES["sample-doctor"].sources} == {"vi-sample-chat", "vi-sample-doctor"}


def test_doctor_mixture_from_local_files_with_limits_is_deterministic(files):
    general, medical = files
    kwargs = dict(sources={"alpaca": str(general), "chatdoctor": str(medical)}, limits={"alpaca": 10}, seed=7)
    a = build_mixture("doctor", **kwargs)
    b = build_mixture("doctor", **kwargs)
    assert [r.id for r in a.records] == [r.id for r in b.records]
    assert [r.to_json() for r in a.records] == [r.to_json() for r in b.records]
    by_key = {s.key: s for s in a.sources}
    assert by_key["alpaca"].used == 10 and by_key["alpaca"].load.kept == 40
    # the medical file's copy of a general record is removed unless the limit left it out
    general_ids = {r.id for r in a.records if r.source == "vi-alpaca"}
    assert by_key["chatdoctor"].duplicates_across == (1 if "vi-alpaca-3" in general_ids else 0)
    assert len(a.records) == 10 + 26 - by_key["chatdoctor"].duplicates_across
    assert {r.source for r in a.records} == {"vi-alpaca", "chatdoctor"}
    assert a.template == "doctor"
    # ChatDoctor's preamble is dropped: the patient's question is the instruction
    assert all(r.instruction.startswith(("Bác sĩ", "Câu hỏi")) for r in a.records if r.source == "chatdoctor")
    c = build_mixture("doctor", **{**kwargs, "seed": 8})
    assert [r.id for r in c.records] != [r.id for r in a.records]
    assert a.counts()["records"] == len(a.records)


def test_cross_source_duplicates_are_removed_and_counted(files):
    general, medical = files
    result = build_mixture("doctor", sources={"alpaca": str(general), "chatdoctor": str(medical)})
    by_key = {s.key: s for s in result.sources}
    assert by_key["chatdoctor"].duplicates_across == 1
    assert len(result.records) == 40 + 25
    assert result.counts()["duplicates_removed"] == 1


def test_source_can_name_another_dataset_and_limit_zero(files, tmp_path):
    general, _ = files
    result = build_mixture("sample-chat", sources={"alpaca": str(general)}, limits={"alpaca": 0})
    assert result.records == [] and result.sources[0].used == 0


def test_sample_mixtures_and_dataset_overrides_work_offline():
    doctor = build_mixture("sample-doctor", limits={"alpaca": 50}, seed=1)
    by_key = {s.key: s for s in doctor.sources}
    assert by_key["alpaca"].used == 50 and by_key["chatdoctor"].used == by_key["chatdoctor"].load.kept >= 110
    assert doctor.template == "doctor"
    # the paper's mixture with each source replaced by a registered dataset
    chat = build_mixture("chat", sources={"alpaca": "vi-sample-chat", "gpt4all": "vi-sample-doctor"},
                         limits={"alpaca": 20, "gpt4all": 10}, seed=1)
    assert [s.dataset for s in chat.sources] == ["vi-sample-chat", "vi-sample-doctor"]
    assert len(chat.records) == 30 and chat.template == "chat"


def test_unknown_keys_and_bad_values_name_the_flag(files):
    general, _ = files
    with pytest.raises(VichatError, match="--limit gpt4all=.*sources: alpaca, chatdoctor"):
        build_mixture("doctor", limits={"gpt4all": 5})
    with pytest.raises(VichatError, match="--source chat=.*"):
        build_mixture("doctor", sources={"chat": str(general)})
    with pytest.raises(VichatError, match="no mixture named 'chatt'"):
        build_mixture("chatt")
    with pytest.raises(VichatError, match="expected KEY=VALUE"):
        parse_assignments(["alpaca"], "source")
    with pytest.raises(VichatError, match="whole number"):
        parse_limits(["alpaca=ten"])
    assert parse_limits(["alpaca=10", "gpt4all=0"]) == {"alpaca": 10, "gpt4all": 0}


def test_adhoc_mixture_keys():
    mix = adhoc_mixture(["vi-alpaca", "/tmp/x/my data.jsonl", "med=/tmp/y.jsonl", "chatdoctor:icliniq"])
    assert mix.keys() == ["vi-alpaca", "my-data", "med", "chatdoctor-icliniq"]
    assert mix.sources[2].dataset == "/tmp/y.jsonl"


def test_offline_paper_mixture_fails_with_guidance(monkeypatch, tmp_path):
    # the first source (vi-alpaca, a URL) fails before any hub access
    monkeypatch.setenv("VICHAT_DATASET_URL_VI_ALPACA", "http://127.0.0.1:9/x.jsonl")
    with pytest.raises(VichatError, match="cannot fetch dataset 'vi-alpaca'.*--source"):
        build_mixture("chat")


# --------------------------------------------------------------------------- prepare


def test_val_size_parsing_and_counts():
    assert parse_val_size("0.02") == 0.02 and parse_val_size("200") == 200 and parse_val_size("0") == 0
    for bad in ("-1", "1.5", "abc"):
        with pytest.raises(VichatError, match="--val-size"):
            parse_val_size(bad)
    assert validation_count(1000, 0.02) == 20
    assert validation_count(10, 0.02) == 1  # a positive share gives at least one record
    assert validation_count(10, 0) == 0
    with pytest.raises(VichatError, match="none of the 10 for training"):
        validation_count(10, 10)


def test_prepare_writes_split_files_and_manifest(files, tmp_path):
    general, medical = files
    out = tmp_path / "out"
    manifest = prepare(out, mixture="doctor", sources={"alpaca": str(general), "chatdoctor": str(medical)},
                       limits={"alpaca": 20}, val_size="0.1", seed=3)
    train = [Record.from_dict(json.loads(line)) for line in (out / "train.jsonl").read_text("utf-8").splitlines()]
    val = [Record.from_dict(json.loads(line)) for line in (out / "validation.jsonl").read_text("utf-8").splitlines()]
    total = manifest["counts"]["records"]
    assert len(val) == round(total * 0.1) and len(train) + len(val) == total
    assert len({r.id for r in train + val}) == total
    assert manifest["template"] == "doctor" and manifest["seed"] == 3 and manifest["format"] == "vichat-prepared/1"
    for name in ("train.jsonl", "validation.jsonl"):
        digest = hashlib.sha256((out / name).read_bytes()).hexdigest()
        assert manifest["files"][name]["sha256"] == digest
    assert [s["key"] for s in manifest["sources"]] == ["alpaca", "chatdoctor"]
    assert manifest["sources"][0]["used"] == 20 and manifest["sources"][0]["path"] == str(general)
    assert read_manifest(out) == manifest
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "train.jsonl", "validation.jsonl"]  # no temp files
    # the same inputs give byte-identical outputs
    again = prepare(tmp_path / "again", mixture="doctor", sources={"alpaca": str(general), "chatdoctor": str(medical)},
                    limits={"alpaca": 20}, val_size="0.1", seed=3)
    assert again["files"] == manifest["files"]


def test_prepare_reports_skipped_records_and_makes_ids_unique(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"id": "1", "instruction": "Một?", "output": "Một."},
                                      {"id": "2", "instruction": "Hai?"}])
    b = _write(tmp_path / "b.jsonl", [{"id": "1", "instruction": "Ba?", "output": "Ba."}])
    with pytest.raises(VichatError, match=rf"{a}:2: missing 'output'"):
        prepare(tmp_path / "out", datasets=[str(a), str(b)], val_size=0)
    manifest = prepare(tmp_path / "out", datasets=[str(a), str(b)], val_size=0, skip_invalid=True)
    assert manifest["counts"]["skipped_invalid"] == 1 and manifest["skipped"]["count"] == 1
    assert manifest["skipped"]["first"] == [f"{a}:2: missing 'output' (looked for 'output', 'response')"]
    assert manifest["counts"]["ids_renamed"] == 1
    ids = sorted(json.loads(line)["id"] for line in (tmp_path / "out" / "train.jsonl").read_text("utf-8").splitlines())
    assert ids == ["1", "b/1"]
    assert (tmp_path / "out" / "validation.jsonl").read_text() == ""


def test_prepare_needs_exactly_one_of_mixture_or_datasets(tmp_path):
    with pytest.raises(VichatError, match="either --mixture"):
        prepare(tmp_path / "o")
    with pytest.raises(VichatError, match="either --mixture"):
        prepare(tmp_path / "o", mixture="chat", datasets=["x.jsonl"])


def test_manifest_verification_detects_changed_files(files, tmp_path):
    general, _ = files
    out = tmp_path / "out"
    prepare(out, datasets=[str(general)], val_size=5)
    with open(out / "train.jsonl", "a", encoding="utf-8") as fh:
        fh.write("{}\n")
    with pytest.raises(VichatError, match="sha256 differs"):
        read_manifest(out)
