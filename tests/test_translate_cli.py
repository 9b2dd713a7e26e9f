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
