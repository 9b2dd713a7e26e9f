"""The google plugin through httpx against a loopback server speaking Translation v2 JSON."""

import json
import time

import pytest

from translate_servers import FakeServer, decomposed_vi, word_substitute
from vichat.records import VichatError, is_nfc, nfc
from vichat.translate.job import iter_failed, translate_file, translate_texts
from vichat.translate.output import failed_path_for
from vichat.retry import Backoff

from vichat.plugins import get_registry  # noqa: E402

GOOGLE = get_registry().translator("google")

FAST = Backoff(base=0.001, cap=0.005, max_retries=3)


@pytest.fixture
def google(monkeypatch):
    with FakeServer() as server:
        monkeypatch.setenv("GOOGLE_API_KEY", "test-key")
        monkeypatch.setenv("VICHAT_GOOGLE_TRANSLATE_URL", server.google_url)
        yield server


def run(texts, **kw):
    kw.setdefault("cache", False)
    kw.setdefault("backoff", FAST)
    return translate_texts(texts, GOOGLE, "en", "vi", **kw)


def test_wire_format(google):
    res = run(["Hello world.", "Good night."])
    assert res.translations == ["VI: Hello world.", "VI: Good night."]
    (seen,) = google.seen
    assert seen.query == {"key": ["test-key"]}
    assert seen.body == {"q": ["Hello world.", "Good night."], "source": "en", "target": "vi", "format": "text"}


PY_FENCED = "```python\nfor x in items:\n    print(x)\nelse:\n    print('done')\n```"
PY_INLINE = ["`print(total)`", "`for x in items:`", "`else:`"]
PY_BARE = "def show(items):\n    for x in items:\n        print(x)\n    else:\n        print('empty')"


def test_code_cannot_be_translated_into_vietnamese(google, tmp_path):
    """Google once turned `print(` into `in (` and `else:` into `khác:`. The fake server makes
    exactly those substitutions on whatever it receives; the code must survive byte for byte."""
    rows = [
        {
            "instruction": "Fix this code so it prints every item in the list, for all inputs.",
            "input": PY_FENCED,
            "output": f"Use {PY_INLINE[0]} in the {PY_INLINE[1]} loop, {PY_INLINE[2]} prints nothing.\n\n{PY_FENCED}",
        },
        {"instruction": "Write a function that prints each item in a list.", "input": "", "output": PY_BARE},
    ]
    src = tmp_path / "in.json"
    src.write_text(json.dumps(rows), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    summary = translate_file(src, out, GOOGLE, cache=tmp_path / "c.sqlite", backoff=FAST)
    assert summary.failed == 0
    got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert got[0]["input"] == PY_FENCED
    assert PY_FENCED in got[0]["output"]
    for span in PY_INLINE:
        assert span in got[0]["output"]
    assert got[1]["output"] == PY_BARE
    text = json.dumps(got, ensure_ascii=False)
    for damage in ("in (", "khác:", "cho x trong", "in(x)"):
        assert damage not in text
    # ...while the prose around the code really went through the substituting translator.
    assert got[0]["instruction"] == "VI: " + word_substitute(rows[0]["instruction"])
    assert got[0]["output"].startswith("VI: Use `print(total)` trong the `for x in items:` loop")
    sent = " ".join(t for s in google.seen for t in s.texts)
    assert "print(" not in sent and "else:" not in sent


def test_429_honours_retry_after(google):
    google.push(("status", 429, {"Retry-After": "0.4"}))
    res = run(["Hello."])
    assert res.translations == ["VI: Hello."]
    assert google.requests == 2 and res.stats.requests == 2
    assert google.seen[1].time - google.seen[0].time >= 0.38


def test_500_is_retried(google):
    google.push(("status", 500), ("status", 503))
    assert run(["Hello."]).translations == ["VI: Hello."]
    assert google.requests == 3


def test_slow_answer_times_out_and_is_retried(google):
    google.push(("sleep", 3.0))
    start = time.monotonic()
    res = run(["Hello."], options={"timeout": "0.3"})
    assert res.translations == ["VI: Hello."]
    assert time.monotonic() - start < 2.5 and google.requests == 2


def test_malformed_json_is_retried_then_failed(google, tmp_path):
    google.push(("malformed",))
    assert run(["Hello."]).translations == ["VI: Hello."]
    google.push(*[("malformed",)] * 4)
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"instruction": "Good bye.", "output": "Later."}) + "\n", encoding="utf-8")
    out = tmp_path / "o.jsonl"
    summary = translate_file(src, out, GOOGLE, cache=tmp_path / "c.sqlite", backoff=FAST)
    assert summary.failed_records == 1 and summary.written == 0
    (entry,) = iter_failed(failed_path_for(out))
    assert "gave up after 4 attempts" in entry["reason"] and "malformed" in entry["reason"]
    assert entry["record"] == {"instruction": "Good bye.", "output": "Later."}


def test_damaged_markers_from_server_fail_the_record(google, tmp_path):
    google.push(("damage",))
    res = run(["Call 555 now.", "Hello."], cache=tmp_path / "c.sqlite")
    assert res.translations == [None, "VI: Hello."]
    assert "missing" in res.errors[0]
    res = run(["Call 555 now."], cache=tmp_path / "c.sqlite")
    assert res.translations == ["VI: Call 555 now."]


def test_rejected_key_stops_the_job(google):
    google.push(("status", 403, {}, {"error": {"code": 403, "message": "API key not valid.", "errors": [{"reason": "forbidden"}]}}))
    with pytest.raises(VichatError, match="rejected.*GOOGLE_API_KEY"):
        run(["Hello.", "World."], batch_size=1, concurrency=1)


def test_missing_key(google, monkeypatch):
    monkeypatch.delenv("GOOGLE_API_KEY")
    with pytest.raises(VichatError, match="GOOGLE_API_KEY"):
        run(["Hello."])
    assert google.requests == 0


def test_connection_refused_is_retried_then_failed(monkeypatch):
    with FakeServer() as server:
        url = server.google_url
    monkeypatch.setenv("GOOGLE_API_KEY", "k")
    monkeypatch.setenv("VICHAT_GOOGLE_TRANSLATE_URL", url)
    res = run(["Hello."], backoff=Backoff(base=0.001, cap=0.001, max_retries=1))
    assert res.translations == [None] and "cannot reach Google Translate" in res.errors[0]


def test_decomposed_answers_become_nfc(tmp_path, monkeypatch):
    with FakeServer(translate=decomposed_vi) as server:
        monkeypatch.setenv("GOOGLE_API_KEY", "k")
        monkeypatch.setenv("VICHAT_GOOGLE_TRANSLATE_URL", server.google_url)
        src = tmp_path / "in.jsonl"
        src.write_text(json.dumps({"instruction": "Hello at 10:30.", "output": "Bye."}) + "\n", encoding="utf-8")
        out = tmp_path / "o.jsonl"
        translate_file(src, out, GOOGLE, cache=False)
    row = json.loads(out.read_text(encoding="utf-8"))
    assert row["instruction"] == nfc("Tiếng Việt: Hello at 10:30.")
    assert is_nfc(row["instruction"]) and is_nfc(row["output"])


def test_retry_after_pauses_every_worker(google):
    google.delay = 0.02
    google.push(("status", 429, {"Retry-After": "0.5"}))
    res = run([f"Text {w}." for w in "abcdefgh"], batch_size=1, concurrency=3)
    assert res.ok
    t429 = google.seen[0].time
    # The retried first batch cannot go before Retry-After (a lower bound: load only delays it) ...
    assert google.seen[-1].time - t429 >= 0.5
    # ... and the other workers pause too: without the shared gate, three workers at 20 ms per
    # request would send the other seven batches within the pause. Requests already on their way
    # when the 429 arrived (two, plus one more if a worker wins the race against the gate being set
    # on a loaded machine) are all that may land inside it.
    during = [s for s in google.seen[1:] if s.time - t429 < 0.45]
    assert len(during) <= 3
