"""The job without HTTP: batching, dedupe, order, cache, failures, NFC, dry-run numbers."""

import json
import random
import sqlite3
import threading
import time
import unicodedata

import pytest

from vichat.records import VichatError, is_nfc
from vichat.specs import TranslatorSpec
from vichat.translate.cache import TranslationCache, cache_key, default_cache_path
from vichat.translate.job import iter_failed, plan_file, translate_file, translate_texts
from vichat.translate.output import failed_path_for
from vichat.retry import Backoff

FAST = Backoff(base=0.001, cap=0.005, max_retries=2)


class Recorder:
    """An in-process translator that records every batch it is sent."""

    def __init__(self, fn=lambda t: "vi " + t, fail_on=None, sleep=0.0):
        self.fn, self.fail_on, self.sleep = fn, fail_on, sleep
        self.batches: list[list[str]] = []
        self.lock = threading.Lock()

    def __call__(self, texts, source, target, **options):
        with self.lock:
            self.batches.append(list(texts))
        if self.sleep:
            time.sleep(random.uniform(0, self.sleep))
        if self.fail_on and any(self.fail_on in t for t in texts):
            raise ValueError("server said no")
        return [self.fn(t) for t in texts]

    @property
    def sent(self) -> list[str]:
        return [t for b in self.batches for t in b]


def spec(rec, **kw) -> TranslatorSpec:
    kw.setdefault("max_batch_size", 4)
    kw.setdefault("max_batch_chars", 200)
    return TranslatorSpec(name="rec", description="recorder", translate=rec, **kw)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def records(n):
    return [{"id": i, "instruction": f"Task number {i} please.", "input": "", "output": f"Answer {i} is here."} for i in range(n)]


def test_batches_respect_limits_and_empty_strings_are_not_sent(tmp_path):
    rec = Recorder()
    texts = ["", "   ", "a" * 90, "b" * 90, "c" * 90, "short", "x", "y", "z", "w"]
    res = translate_texts(texts, spec(rec), cache=False)
    assert res.ok
    assert res.translations[:2] == ["", "   "]
    assert res.translations[2] == "vi " + "a" * 90
    assert "" not in rec.sent and "   " not in rec.sent
    assert all(len(b) <= 4 and sum(map(len, b)) <= 200 for b in rec.batches)
    assert sorted(rec.sent) == sorted(texts[2:])


def test_duplicates_are_paid_once_and_whitespace_is_kept():
    rec = Recorder()
    res = translate_texts(["Hello.", "  Hello.\n", "Hello."], spec(rec), cache=False)
    assert rec.sent == ["Hello."]
    assert res.translations == ["vi Hello.", "  vi Hello.\n", "vi Hello."]


def test_output_order_survives_concurrency(tmp_path):
    rec = Recorder(sleep=0.01)
    src = write_jsonl(tmp_path / "in.jsonl", records(120))
    out = tmp_path / "out.jsonl"
    summary = translate_file(src, out, spec(rec, max_batch_size=3), cache=tmp_path / "c.sqlite", concurrency=8)
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == list(range(120))
    assert rows[7] == {"id": 7, "instruction": "vi Task number 7 please.", "input": "", "output": "vi Answer 7 is here."}
    assert summary.written == 120 and summary.failed_records == 0 and summary.failed_path is None
    assert not (tmp_path / "out.jsonl.partial").exists()


def test_rerun_is_served_from_cache_with_zero_requests(tmp_path):
    rec = Recorder()
    src = write_jsonl(tmp_path / "in.jsonl", records(30))
    out1, out2 = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first = translate_file(src, out1, spec(rec), cache=tmp_path / "c.sqlite")
    n = len(rec.batches)
    assert first.requests == n > 0 and first.translated == 60
    second = translate_file(src, out2, spec(rec), cache=tmp_path / "c.sqlite")
    assert len(rec.batches) == n and second.requests == 0
    assert second.from_cache == 60 and second.translated == 0
    assert out1.read_bytes() == out2.read_bytes()


def test_cache_key_separates_translator_options_and_languages(tmp_path):
    keys = {
        cache_key("google", {}, "en", "vi", "Hi"),
        cache_key("openai", {}, "en", "vi", "Hi"),
        cache_key("google", {"model": "nmt"}, "en", "vi", "Hi"),
        cache_key("google", {}, "en", "fr", "Hi"),
        cache_key("google", {}, "fr", "vi", "Hi"),
        cache_key("google", {}, "en", "vi", "Hi!"),
    }
    assert len(keys) == 6
    assert cache_key("g", {"a": 1, "b": "x"}, "en", "vi", "t") == cache_key("g", {"b": "x", "a": "1"}, "en", "vi", "t")


def test_options_that_change_output_are_in_the_key_timeout_is_not(tmp_path):
    def tr(texts, source, target, *, model, timeout):  # called with every declared option
        calls.append(model)
        return [f"{model}:{t}" for t in texts]

    calls: list = []
    s = TranslatorSpec(name="opt", description="d", translate=tr, options={"model": "m1", "timeout": 5})
    db = tmp_path / "c.sqlite"
    assert translate_texts(["Hi"], s, cache=db).translations == ["m1:Hi"]
    assert translate_texts(["Hi"], s, cache=db, options={"model": "m1", "timeout": "9"}).translations == ["m1:Hi"]
    assert translate_texts(["Hi"], s, cache=db, options={"model": "m2"}).translations == ["m2:Hi"]
    assert calls == ["m1", "m2"]
    with pytest.raises(VichatError, match=r"takes no option 'temprature'; its options: model \(default 'm1'\), timeout"):
        translate_texts(["Hi"], s, cache=db, options={"temprature": "0"})  # a typo is refused, not ignored
    assert calls == ["m1", "m2"]


def test_cache_is_sqlite_wal_and_persists(tmp_path):
    path = tmp_path / "sub" / "t.sqlite"
    with TranslationCache(path) as c:
        c.put_many([("k1", "v1"), ("k2", "v2")], "x", "en", "vi")
    with TranslationCache(path) as c:
        assert c.get_many(["k1", "k2", "k3"]) == {"k1": "v1", "k2": "v2"}
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_default_cache_path_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("VICHAT_CACHE_DIR", str(tmp_path / "cc"))
    assert default_cache_path() == tmp_path / "cc" / "translate.sqlite"
    monkeypatch.delenv("VICHAT_CACHE_DIR")
    assert str(default_cache_path()).endswith(".cache/vichat/translate.sqlite")


def test_failed_records_go_to_side_file_never_dropped(tmp_path):
    rec = Recorder(fail_on="BOOM")
    rows = records(5)
    rows[2]["output"] = "This one goes BOOM."
    src = tmp_path / "in.jsonl"
    write_jsonl(src, rows)
    with open(src, "a", encoding="utf-8") as fh:
        fh.write("{not json\n")
    out = tmp_path / "out.jsonl"
    summary = translate_file(src, out, spec(rec, max_batch_size=1), cache=tmp_path / "c.sqlite", backoff=FAST)
    assert [r["id"] for r in read_jsonl(out)] == [0, 1, 3, 4]
    assert summary.failed_records == 2 and summary.failed == 1
    failed = list(iter_failed(failed_path_for(out)))
    assert failed_path_for(out) == tmp_path / "out.failed.jsonl"
    assert failed[0]["location"] == f"{src}:3"
    assert "server said no" in failed[0]["reason"] and failed[0]["record"] == rows[2]
    assert failed[0]["fields"] == {"output": "ValueError: server said no"}
    assert failed[1]["location"] == f"{src}:6" and "invalid JSON" in failed[1]["reason"]
    # A clean rerun removes the stale side file; the failed text was never cached.
    rec.fail_on = None
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    again = translate_file(src, out, spec(rec, max_batch_size=1), cache=tmp_path / "c.sqlite")
    assert again.failed_records == 0 and again.translated == 1 and again.requests == 1
    assert not failed_path_for(out).exists()


def test_damaged_markers_fail_the_segment_and_are_not_cached(tmp_path):
    rec = Recorder(fn=lambda t: "vi " + t.replace("\u27e60\u27e7", "0"))
    res = translate_texts(["Call 555 now.", "Hello."], spec(rec), cache=tmp_path / "c.sqlite")
    assert res.translations == [None, "vi Hello."]
    assert "missing \u27e60\u27e7" in res.errors[0]
    rec.fn = lambda t: "vi " + t
    res = translate_texts(["Call 555 now."], spec(rec), cache=tmp_path / "c.sqlite")
    assert res.translations == ["vi Call 555 now."]


def test_long_text_is_split_and_rejoined(tmp_path):
    rec = Recorder(fn=str.upper)
    text = "\n\n".join(f"Paragraph {w}: this is fine. Another one follows here! And a third?" for w in "abc") + "\n"
    res = translate_texts([text], spec(rec, max_batch_chars=40), cache=False)
    assert res.translations == [text.upper()]
    assert len(rec.sent) > 3 and all(len(t) <= 40 for t in rec.sent)


def test_output_is_nfc_and_code_is_byte_exact(tmp_path):
    rec = Recorder(fn=lambda t: unicodedata.normalize("NFD", "Tiếng Việt " + t))
    code = "`caf\u0065\u0301`"  # decomposed inside code: left exactly as it was
    res = translate_texts([f"Write {code} now"], spec(rec), cache=False)
    out = res.translations[0]
    assert out == unicodedata.normalize("NFC", "Tiếng Việt Write ") + code + " now"
    assert is_nfc(out.replace(code, ""))


def test_fields_other_fields_and_language(tmp_path):
    rec = Recorder()
    src = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "Hi there", "response": "Hello", "n": 3, "language": "en", "tags": ["a"]}])
    out = tmp_path / "o.jsonl"
    translate_file(src, out, spec(rec), fields=["prompt"], cache=False)
    assert read_jsonl(out) == [{"prompt": "vi Hi there", "response": "Hello", "n": 3, "language": "vi", "tags": ["a"]}]
    with pytest.raises(VichatError, match="none of the fields instruction, output"):
        translate_file(src, out, spec(rec), fields=["instruction", "output"], cache=False)


def test_csv_input_and_limit(tmp_path):
    src = tmp_path / "in.csv"
    src.write_text("instruction,output\nSay hi,Hi\nSay bye,Bye\nSay no,No\n", encoding="utf-8")
    out = tmp_path / "o.jsonl"
    s = translate_file(src, out, spec(Recorder()), limit=2, cache=False)
    assert s.records == 2
    assert read_jsonl(out) == [{"instruction": "vi Say hi", "output": "vi Hi"}, {"instruction": "vi Say bye", "output": "vi Bye"}]


def test_dry_run_numbers_exclude_cache_and_duplicates(tmp_path):
    rec = Recorder()
    rows = [
        {"instruction": "Say hello.", "input": "", "output": "Hello there, friend."},
        {"instruction": "Say hello.", "input": "", "output": "Count to 3."},
        {"instruction": "42", "input": "```\ncode\n```", "output": ""},
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    s = spec(rec, max_batch_size=2, cost_per_million_chars=20.0)
    db = tmp_path / "c.sqlite"
    plan = plan_file(src, s, cache=db)
    assert (plan.records, plan.segments, plan.skipped, plan.cached, plan.to_send) == (3, 9, 5, 0, 4)
    # "Say hello." (10) + "Hello there, friend." (20) + "Count to ⟦0⟧." (13)
    assert plan.chunks == 3 and plan.characters == 43 and plan.requests == 2
    assert plan.cost == pytest.approx(43 / 1e6 * 20)
    assert rec.batches == []  # nothing sent
    translate_file(src, tmp_path / "o.jsonl", s, cache=db, limit=1)
    plan = plan_file(src, s, cache=db)
    # The second record's instruction is the first one's: cached too.
    assert (plan.cached, plan.to_send, plan.characters, plan.requests) == (3, 1, 13, 1)


def test_missing_key_names_the_variable_unless_all_cached(tmp_path, monkeypatch):
    monkeypatch.delenv("NEEDED_KEY", raising=False)
    rec = Recorder()
    s = spec(rec, env_vars=("NEEDED_KEY",))
    db = tmp_path / "c.sqlite"
    with pytest.raises(VichatError, match="NEEDED_KEY"):
        translate_texts(["Hi"], s, cache=db)
    monkeypatch.setenv("NEEDED_KEY", "x")
    translate_texts(["Hi"], s, cache=db)
    monkeypatch.delenv("NEEDED_KEY")
    assert translate_texts(["Hi"], s, cache=db).translations == ["vi Hi"]


def test_unknown_translator_is_a_user_error():
    from vichat.plugins import get_registry

    with pytest.raises(VichatError, match="no translator named 'gogle'.*google"):
        get_registry().translator("gogle")
    with pytest.raises(VichatError, match=r"registry.translator\('google'\)"):
        translate_texts(["Hi"], "google", cache=False)  # names become specs at the edge


def test_builtin_translators_are_registered():
    from vichat.plugins import get_registry

    reg = get_registry()
    google, openai, identity = reg.translator("google"), reg.translator("openai"), reg.translator("identity")
    assert google.env_vars == ("GOOGLE_API_KEY",) and google.cost_per_million_chars == 20.0
    assert openai.env_vars == ("OPENAI_API_KEY",) and openai.cost_per_million_chars > 0
    assert identity.translate(["a", "b"], "en", "vi") == ["a", "b"]
    assert reg.owner("translators", "google") == "google-translate"


def test_plugins_import_nothing_heavy():
    import subprocess
    import sys

    code = (
        "import sys, vichat_plugins.google_translate, vichat_plugins.openai_translate, "
        "vichat_plugins.identity_translate, vichat.translate.commands;"
        "bad = [m for m in ('openai', 'httpx', 'torch', 'tqdm', 'sqlite3') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def words(i: int) -> str:
    """A different text per number without digits (numbers are protected, hence shared)."""
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    return " ".join(names[int(d)] for d in str(i))


def test_a_run_prepares_as_it_goes_yet_sends_the_planned_batches(tmp_path):
    # translate_texts plans everything first; translate_file prepares slice by slice while the
    # first requests are out. Both must send the same batches, and a text met again after its
    # batch was answered (far beyond the first slices) is paid once.
    rows = [{"instruction": f"Stir the pot {words(i)} times.", "output": "Done."} for i in range(2100)]
    rows[2050]["instruction"] = rows[3]["instruction"]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    planned, streamed = Recorder(), Recorder()
    texts = [r[f] for r in rows for f in ("instruction", "output")]
    expected = translate_texts(texts, spec(planned), cache=False, concurrency=1)
    summary = translate_file(src, tmp_path / "out.jsonl", spec(streamed), fields=("instruction", "output"),
                             cache=tmp_path / "c.sqlite", concurrency=1, progress=False)
    assert streamed.batches == planned.batches
    assert streamed.sent.count(rows[3]["instruction"]) == 1 and streamed.sent.count("Done.") == 1
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [o[f] for o in out for f in ("instruction", "output")] == expected.translations
    assert out[2050]["instruction"] == "vi " + rows[3]["instruction"]
    assert summary.translated == len(texts) and summary.failed == 0


def test_a_partly_cached_run_looks_up_each_slice_and_sends_only_the_rest(tmp_path):
    rows = [{"instruction": f"Record {words(i)} needs words."} for i in range(300)]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    first, second = Recorder(), Recorder()
    translate_file(src, tmp_path / "half.jsonl", spec(first), limit=150, cache=tmp_path / "c.sqlite", progress=False)
    summary = translate_file(src, tmp_path / "all.jsonl", spec(second), cache=tmp_path / "c.sqlite", progress=False)
    assert sorted(second.sent) == sorted(r["instruction"] for r in rows[150:])
    assert (summary.from_cache, summary.translated) == (150, 150)
    assert [o["instruction"] for o in read_jsonl(tmp_path / "all.jsonl")] == ["vi " + r["instruction"] for r in rows]


def test_a_new_cache_file_is_wal_and_synced_normally_once_open(tmp_path):
    for _ in range(2):  # created, then reopened
        db = TranslationCache(tmp_path / "new.sqlite")
        assert db._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        empty = db.is_empty()
        db.put_many([("k", "v")], "rec", "en", "vi")
        assert not db.is_empty() and db.get_many(["k"]) == {"k": "v"}
        db.close()
    assert empty is False  # the second open found the first one's row
