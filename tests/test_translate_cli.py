"""`vichat translate`: dry run, errors, and resuming after kill -9 and Ctrl-C without paying twice."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from translate_servers import FakeServer, fake_vi
from vichat.cli import main
from vichat.plugins import get_registry
from vichat.translate.cache import TranslationCache, cache_key
from vichat.translate.engine import output_options

N = 40


def word(i: int) -> str:
    # Distinct words, not digits: numbers are protected, so "idea 1" and "idea 2" are one text.
    return "".join("klmnoprstu"[int(d)] for d in str(i)) + "ish"


def make_input(path, n=N):
    rows = [
        {"id": i, "instruction": f"Explain the {word(i)} idea in one line.", "input": "",
         "output": f"The {word(i)} idea {i} is simple: see `f({i})` and https://example.com/{i}."}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return rows


@pytest.fixture
def google(monkeypatch, tmp_path):
    with FakeServer() as server:
        monkeypatch.setenv("GOOGLE_API_KEY", "test-key")
        monkeypatch.setenv("VICHAT_GOOGLE_TRANSLATE_URL", server.google_url)
        monkeypatch.setenv("VICHAT_CACHE_DIR", str(tmp_path / "cache"))
        yield server


def test_dry_run_prints_the_bill_and_sends_nothing(google, tmp_path):
    make_input(tmp_path / "in.jsonl", 5)
    result = CliRunner().invoke(main, ["translate", str(tmp_path / "in.jsonl"), str(tmp_path / "o.jsonl"), "-t", "google", "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "dry run: nothing was sent" in out
    assert "records         5" in out and "10 to translate" not in out
    assert "segments        15 (0 cached, 5 with nothing to translate)" in out
    assert "requests        1 " in out and "$20 per million characters (google)" in out
    assert google.requests == 0 and not (tmp_path / "o.jsonl").exists()


def test_user_errors_are_one_line(google, tmp_path, monkeypatch):
    make_input(tmp_path / "in.jsonl", 2)
    runner = CliRunner()
    args = ["translate", str(tmp_path / "in.jsonl"), str(tmp_path / "o.jsonl")]
    result = runner.invoke(main, args + ["-t", "gogle"])
    assert result.exit_code == 2 and "error: no translator named 'gogle'. Did you mean 'google'?" in result.output
    monkeypatch.delenv("GOOGLE_API_KEY")
    result = runner.invoke(main, args + ["-t", "google"])
    assert result.exit_code == 2 and "GOOGLE_API_KEY" in result.output and "Traceback" not in result.output
    result = runner.invoke(main, args + ["-t", "identity", "--option", "nokey"])
    assert result.exit_code == 2 and "key=value" in result.output


def test_summary_and_failed_exit_code(google, tmp_path):
    make_input(tmp_path / "in.jsonl", 3)
    google.push(*[("status", 500)] * 3)
    args = ["translate", str(tmp_path / "in.jsonl"), str(tmp_path / "o.jsonl"), "-t", "google",
            "--retries", "2", "--backoff-base", "0.001", "--batch-size", "100", "-j", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "0 translated, 0 from cache, 3 with nothing to translate, 6 failed" in result.output
    assert "failed records: 3, written to" in result.output
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "6 translated" in result.output


def cli(tmp_path, *extra):
    return [sys.executable, "-m", "vichat.cli", "translate", str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl"),
            "-t", "google", "--batch-size", "2", "-j", "2", "--backoff-base", "0.01", *extra]


def finished_keys(tmp_path, texts):
    spec = get_registry().translator("google")
    keyed = {cache_key("google", output_options(spec, {}), "en", "vi", t): t for t in texts}
    with TranslationCache(tmp_path / "cache" / "translate.sqlite") as db:
        return {keyed[k] for k in db.get_many(keyed)}


def wait_for(server, n, proc, limit=20.0):
    deadline = time.monotonic() + limit
    while server.requests < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "server saw too few requests"
        time.sleep(0.01)


def check_output(tmp_path, rows):
    got = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in got] == [r["id"] for r in rows]
    for g, r in zip(got, rows):
        assert g["instruction"] == fake_vi(r["instruction"])
        assert g["output"] == fake_vi(r["output"]) and f"`f({r['id']})`" in g["output"]
        assert g["input"] == ""


@pytest.mark.slow
def test_kill_9_midway_then_resume_pays_nothing_twice(google, tmp_path):
    rows = make_input(tmp_path / "in.jsonl")
    google.delay = 0.05
    proc = subprocess.Popen(cli(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    wait_for(google, 12, proc)
    proc.kill()  # SIGKILL: no cleanup at all
    proc.wait()
    assert not (tmp_path / "out.jsonl").exists()
    first_run = [t for s in google.seen for t in s.texts]
    done = finished_keys(tmp_path, first_run)
    assert 10 <= len(done) < 2 * N
    seen_before = len(google.seen)

    google.delay = 0.0
    proc = subprocess.run(cli(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    check_output(tmp_path, rows)
    second_run = [t for s in google.seen[seen_before:] for t in s.texts]
    assert second_run, "the rerun had work left"
    assert not done & set(second_run), "a segment finished before the kill was paid for again"
    assert set(first_run) | set(second_run) == {t for s in google.seen for t in s.texts}
    assert len(set(first_run) | set(second_run)) == 2 * N  # every segment translated
    assert f"{len(done)} from cache" in proc.stdout
    # And a third run sends nothing at all.
    before = google.requests
    proc = subprocess.run(cli(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and google.requests == before
    assert f"0 translated, {2 * N} from cache" in proc.stdout


@pytest.mark.slow
def test_ctrl_c_finishes_cleanly_with_exit_130(google, tmp_path):
    rows = make_input(tmp_path / "in.jsonl")
    google.delay = 0.05
    proc = subprocess.Popen(cli(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    wait_for(google, 8, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted:" in err and "rerun the same command to resume" in err and "Traceback" not in err
    assert (tmp_path / "out.jsonl.partial").exists() and not (tmp_path / "out.jsonl").exists()
    done = finished_keys(tmp_path, [t for s in google.seen for t in s.texts])
    assert len(done) >= 8  # the in-flight batches landed in the cache too
    google.delay = 0.0
    seen_before = len(google.seen)
    proc = subprocess.run(cli(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    check_output(tmp_path, rows)
    assert not done & {t for s in google.seen[seen_before:] for t in s.texts}


# ---------------------------------------------------------------- option values are checked first


@pytest.mark.parametrize("translator, option, said", [
    ("openai", "temperature=hot", "temperature='hot': expected a number"),
    ("openai", "timeout=-5", "timeout=-5.0: expected a number of seconds above 0"),
    ("openai", "temperature=7", "temperature=7.0: expected a number from 0 to 2"),
    ("openai", "temperature=nan", "temperature='nan': expected a number"),
    ("google", "timeout=soon", "timeout='soon': expected a number"),
    ("google", "timeout=0", "timeout=0.0: expected a number of seconds above 0"),
    ("google", "model=turbo", "model='turbo': expected nmt or base"),
])
def test_bad_option_value_is_a_user_error_before_any_request(google, tmp_path, monkeypatch, translator, option, said):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", google.openai_url)
    make_input(tmp_path / "in.jsonl", 5)
    out = tmp_path / "o.jsonl"
    for extra in ([], ["--dry-run"]):
        result = CliRunner().invoke(main, ["translate", str(tmp_path / "in.jsonl"), str(out), "-t", translator,
                                           "-o", option, "--retries", "0"] + extra)
        assert result.exit_code == 2, result.output
        assert result.output.count("\n") == 1 and result.output.startswith("error: "), result.output
        assert f"translator {translator!r}: bad option" in result.output and said in result.output
        assert "Traceback" not in result.output and "requests" not in result.output
    assert google.requests == 0
    assert not out.exists() and not (tmp_path / "o.failed.jsonl").exists() and not (tmp_path / "o.jsonl.partial").exists()


def test_option_values_are_converted_to_the_declared_type(google, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", google.openai_url)
    make_input(tmp_path / "in.jsonl", 2)
    args = ["translate", str(tmp_path / "in.jsonl"), str(tmp_path / "o.jsonl"), "-t", "openai"]
    result = CliRunner().invoke(main, args + ["-o", "temperature=0.5", "-o", "timeout=30"])
    assert result.exit_code == 0, result.output
    assert google.seen and all(s.body["temperature"] == 0.5 for s in google.seen)
    # "temperature=0" is the default 0.0: the same cache key, so nothing is sent again.
    spec = get_registry().translator("openai")
    assert output_options(spec, {"temperature": "0"}) == output_options(spec, {})
    before = google.requests
    CliRunner().invoke(main, args)
    result = CliRunner().invoke(main, args + ["-o", "temperature=0"])
    assert result.exit_code == 0 and "requests: 0 " in result.output, result.output
    assert google.requests > before


def test_third_party_translator_options_keep_working():
    from vichat.records import VichatError
    from vichat.specs import TranslatorSpec
    from vichat.translate.job import translate_texts

    calls = []

    def translate(texts, source, target, *, beam, shout, style, extra):
        calls.append((beam, shout, style, extra))
        return [t.upper() if shout else t for t in texts]

    spec = TranslatorSpec(name="shout", description="x", translate=translate,
                          options={"beam": 4, "shout": False, "style": "plain", "extra": None})
    res = translate_texts(["hi there"], spec, options={"beam": "2", "shout": "yes", "style": "5", "extra": "x"}, cache=False)
    assert res.translations == ["HI THERE"] and calls == [(2, True, "5", "x")]
    translate_texts(["hi there"], spec, options={"beam": 3, "shout": True}, cache=False)  # typed values (Python API)
    assert calls[-1] == (3, True, "plain", None)
    for bad, said in (({"beam": "two"}, "beam='two': expected a whole number"),
                      ({"shout": "maybe"}, "shout='maybe': expected true or false")):
        with pytest.raises(VichatError, match=said):
            translate_texts(["hi"], spec, options=bad, cache=False)
    assert len(calls) == 2


def test_output_that_cannot_be_written_is_one_line(google, tmp_path):
    make_input(tmp_path / "in.jsonl", 2)
    (tmp_path / "afile").write_text("not a folder")
    cases = [(tmp_path / "afile" / "x.jsonl", "afile is a file, not a folder"),
             (tmp_path / "afile" / "deeper" / "x.jsonl", "afile is a file, not a folder"),
             (tmp_path / "missing" / "x.jsonl", None)]  # a missing folder is made
    for out, said in cases + [("/proc/x.jsonl", "/proc/x.jsonl")]:
        result = CliRunner().invoke(main, ["translate", str(tmp_path / "in.jsonl"), str(out), "-t", "identity"])
        if said is None:
            assert result.exit_code == 0, result.output
            continue
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: {out}: cannot write the output there") and said in result.output
        assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_repair_output_that_cannot_be_written_is_one_line(google, tmp_path):
    make_input(tmp_path / "in.jsonl", 2)
    (tmp_path / "afile").write_text("")
    result = CliRunner().invoke(main, ["translate", "--repair", str(tmp_path / "in.jsonl"), str(tmp_path / "afile" / "x.jsonl"),
                                       "--source-records", str(tmp_path / "in.jsonl"), "-t", "identity"])
    assert result.exit_code == 2 and "afile is a file, not a folder" in result.output, result.output
    assert "Traceback" not in result.output


def test_unreadable_input_rows_are_reported_apart_from_failed_ones(google, tmp_path):
    rows = make_input(tmp_path / "in.jsonl", 3)
    with open(tmp_path / "in.jsonl", "a", encoding="utf-8") as fh:
        fh.write("{not json\n")
    args = ["translate", str(tmp_path / "in.jsonl"), str(tmp_path / "o.jsonl"), "-t", "google"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "failed records" not in result.output and "rerun to retry" not in result.output
    assert f"unreadable input rows: 1, listed in {tmp_path / 'o.failed.jsonl'}" in result.output
    assert "fix the input" in result.output
    assert len((tmp_path / "o.jsonl").read_text().splitlines()) == 3
    # Both kinds together: each counted once, on its own line.
    google.push(*[("status", 500)] * 3)
    (tmp_path / "in.jsonl").write_text("{not json\n" + json.dumps({**rows[0], "output": "A new text."}) + "\n")
    result = CliRunner().invoke(main, args + ["--retries", "2", "--backoff-base", "0.001"])
    assert result.exit_code == 1, result.output
    assert "failed records: 1, written to" in result.output and "(rerun to retry them)" in result.output
    assert "unreadable input rows: 1," in result.output


def test_jsonl_with_a_byte_order_mark_translates_every_record(google, tmp_path):
    rows = make_input(tmp_path / "plain.jsonl", 3)
    (tmp_path / "bom.jsonl").write_text("\ufeff" + (tmp_path / "plain.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    result = CliRunner().invoke(main, ["translate", str(tmp_path / "bom.jsonl"), str(tmp_path / "o.jsonl"), "-t", "identity"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in (tmp_path / "o.jsonl").read_text(encoding="utf-8").splitlines()] == rows
    assert not (tmp_path / "o.failed.jsonl").exists()


def test_characters_sent_counts_every_attempt(google, tmp_path):
    make_input(tmp_path / "in.jsonl", 4)
    google.push(("status", 500), ("status", 429), ("ok",), ("status", 500), ("status", 500), ("status", 500))
    args = ["translate", str(tmp_path / "in.jsonl"), str(tmp_path / "o.jsonl"), "-t", "google",
            "--retries", "2", "--backoff-base", "0.001", "--batch-size", "4", "-j", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output  # the second batch gave up after 3 attempts
    sent = sum(len(t) for s in google.seen for t in s.texts)
    assert google.requests == 6 and sent > 0
    assert f"requests: 6 ({sent:,} characters sent)" in result.output, result.output
