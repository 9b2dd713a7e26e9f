"""`vichat eval judge` through the real openai client against a loopback chat-completions server."""

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from openai_server import JudgeServer
from vichat.cli import main
from vichat.evaluate.jobs import JudgeJob, judge_job
from vichat.evaluate.judge import JudgeSettings
from vichat.evaluate.runner import RunOptions
from vichat.retry import Backoff

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-test-secret-4242"
FAST = Backoff(base=0.001, cap=0.01, max_retries=4)
QUESTIONS = [
    (1, "generic", "Làm thế nào để quản lý thời gian?"),
    (2, "coding", "Viết hàm đảo ngược chuỗi trong Python."),
    (3, "math", "Giải phương trình 3x + 10 = 5(x - 2)."),
    (4, "writing", "Viết một bài thơ ngắn về Hà Nội."),
]
MODEL = {1: "Lập kế hoạch mỗi ngày. [[6]]", 2: "def f(s): return s[::-1] [[7]]", 3: "x = 3 [[2]]", 4: "Hà Nội mùa thu... [[8]]"}
BASE = {1: "Hãy ưu tiên việc quan trọng và lập lịch. [[8]]", 2: "def rev(s):\n    return s[::-1] [[9]]",
        3: "3x + 10 = 5x - 10, x = 10 [[10]]", 4: "Hà Nội, phố cổ rêu phong... [[8]]"}


@pytest.fixture
def server(monkeypatch):
    with JudgeServer() as s:
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_BASE_URL", s.openai_url)
        yield s


@pytest.fixture
def files(tmp_path):
    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return str(path)

    return {
        "questions": write("q.jsonl", [{"question_id": i, "category": c, "text": t} for i, c, t in QUESTIONS]),
        "answers": write("a.jsonl", [{"question_id": i, "text": t, "answer_id": f"m{i}", "model_id": "bloomz-chat"} for i, t in MODEL.items()]),
        "baseline": write("b.jsonl", [{"question_id": i, "text": t, "answer_id": f"b{i}", "model_id": "gpt-3.5-turbo"} for i, t in BASE.items()]),
        "out": str(tmp_path / "reviews.jsonl"),
        "cache": str(tmp_path / "judge.sqlite"),
    }


def cli(files, *args):
    base = ["eval", "judge", "--questions", files["questions"], "--answers", files["answers"],
            "--baseline", files["baseline"], "--out", files["out"], "--cache", files["cache"]]
    return CliRunner().invoke(main, base + list(args))


def reviews(files):
    return [json.loads(line) for line in Path(files["out"]).read_text(encoding="utf-8").splitlines()]


def job(files, **kw):
    from vichat.plugins import get_registry

    run = kw.pop("run", RunOptions(backoff=FAST, progress=False))
    return judge_job(JudgeJob(files["questions"], files["answers"], files["baseline"], files["out"],
                              cache=files["cache"], run=run, judge=get_registry().judge("openai"), **kw))


def test_paper_protocol_happy_path(server, files):
    r = cli(files, "--protocol", "paper")
    assert r.exit_code == 0, r.output
    assert server.requests == 4 and server.kinds() == ["judge"] * 4
    body = server.seen[0].body
    assert body["model"] == "gpt-4" and body["temperature"] == 0.2 and body["max_tokens"] == 1024
    assert body["messages"][0]["content"].startswith("You are a helpful and precise assistant")
    prompts = " ".join(s.texts[0] for s in server.seen)
    assert "evaluate the coding abilities" in prompts and "mathematical proficiency" in prompts
    rows = reviews(files)
    assert [r["question_id"] for r in rows] == [1, 2, 3, 4]
    first = rows[0]
    for field in ("review_id", "question_id", "answer1_id", "answer2_id", "reviewer_id", "metadata", "text", "score"):
        assert field in first
    assert first["answer1_id"] == "b1" and first["answer2_id"] == "m1" and first["baseline_position"] == 1
    assert first["score"] == [8, 6] and first["model_id"] == "bloomz-chat" and first["baseline_id"] == "gpt-3.5-turbo"
    assert [r["prompt_id"] for r in rows] == ["vicuna-general", "vicuna-coding", "vicuna-math", "vicuna-general"]
    assert rows[1]["reviewer_id"] == "openai:gpt-4:vicuna-coding@v1"
    assert "4 reviews written" in r.output and "4 judged now" in r.output
    assert KEY not in r.output and KEY not in Path(files["out"]).read_text()


def test_swap_judges_both_orders_and_a_rerun_sends_nothing(server, files):
    assert cli(files).exit_code == 0
    rows = reviews(files)
    assert server.requests == 8 and len(rows) == 8
    swapped = [r for r in rows if r["order"] == "model-first"]
    assert len(swapped) == 4 and all(r["answer1_id"].startswith("m") and r["baseline_position"] == 2 for r in swapped)
    first = reviews(files)
    r = cli(files)
    assert r.exit_code == 0 and server.requests == 8, "a warm rerun must not call the API"
    assert "8 from the cache" in r.output and reviews(files) == first
    r = cli(files, "--judge-model", "gpt-4o")  # another judge model is another judgment
    assert r.exit_code == 0 and server.requests == 16 and server.seen[-1].body["model"] == "gpt-4o"


def test_unreadable_answer_gets_one_reask_then_is_recorded_failed(server, files):
    server.push(("text", "Both answers are decent."), ("text", "I would rather not say."))
    out = job(files, protocol="paper", run=RunOptions(backoff=FAST, progress=False, concurrency=1))
    rows = reviews(files)
    assert server.kinds()[:2] == ["judge", "reask"] and server.requests == 5
    bad = rows[0]
    assert bad["score"] is None and bad["reasked"] and "unreadable after one re-ask" in bad["error"]
    assert "[vichat: re-asked for the scores]" in bad["text"] and "I would rather not say." in bad["text"]
    assert out.failed == 1 and all(r["score"] for r in rows[1:])
    # Cached as a paid, final answer: a rerun asks nothing; --retry-failed asks again.
    job(files, protocol="paper")
    assert server.requests == 5
    job(files, protocol="paper", run=RunOptions(backoff=FAST, progress=False, retry_failed=True))
    assert server.requests == 6 and reviews(files)[0]["score"] == [8, 6]


def test_reask_that_works_is_kept(server, files):
    server.push(("text", "Both answers are decent."))
    job(files, protocol="paper", run=RunOptions(backoff=FAST, progress=False, concurrency=1))
    row = reviews(files)[0]
    assert row["score"] == [8, 6] and row["reasked"] and row["parse_method"] == "reask+first_line"


def test_malformed_body_429_and_500_storms(server, files):
    server.push(("malformed",), *[("status", 429, {"Retry-After": "0.01"})] * 5, *[("status", 500)] * 5, ("status", 503))
    # Storms, not limits; 12 retries each, so that however the 12 errors fall (one worker can meet
    # several in a row while the others are still starting on a loaded machine), none gives up.
    patient = Backoff(base=0.001, cap=0.01, max_retries=12)
    out = job(files, run=RunOptions(backoff=patient, progress=False, rpm=None, tpm=None))
    rows = reviews(files)
    assert all(r["score"] is not None for r in rows) and len(rows) == 8
    assert out.summary.attempts == 8 + 12 and server.requests == 20
    assert out.summary.usage.requests == 8


def test_retry_after_is_honoured(server, files):
    server.push(("status", 429, {"Retry-After": "0.4"}))
    job(files, protocol="paper", run=RunOptions(backoff=FAST, progress=False, concurrency=1))
    assert server.seen[1].time - server.seen[0].time >= 0.38


def test_timeout_is_retried(server, files):
    server.push(("sleep", 2.0))
    r = cli(files, "--protocol", "paper", "--concurrency", "1", "--timeout", "0.3", "--limit", "1")
    assert r.exit_code == 0 and server.requests == 2 and reviews(files)[0]["score"] == [8, 6]


def test_exhausted_retries_fail_the_judgment_without_caching(server, files):
    server.push(*[("status", 500)] * 5)  # FAST allows 1 + 4 attempts
    out = job(files, protocol="paper", run=RunOptions(backoff=FAST, progress=False, concurrency=1))
    rows = reviews(files)
    assert rows[0]["score"] is None and "gave up after 5 attempts" in rows[0]["error"] and out.failed == 1
    job(files, protocol="paper")
    assert server.requests == 5 + 3 + 1 and reviews(files)[0]["score"] == [8, 6]


def test_fatal_key_error_stops_with_a_message(server, files):
    server.push(("status", 401, {}, {"error": {"message": "Incorrect API key", "type": "invalid_request_error", "code": "invalid_api_key"}}))
    r = cli(files, "--concurrency", "1")
    assert r.exit_code == 2 and "OPENAI_API_KEY" in r.output and KEY not in r.output
    assert server.requests == 1


def test_missing_key_and_missing_answers(server, files, monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY")
    r = cli(files)
    assert r.exit_code == 2 and "needs OPENAI_API_KEY" in r.output and server.requests == 0
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(Path(files["answers"]).read_text().splitlines()[:2]) + "\n")
    r = CliRunner().invoke(main, ["eval", "judge", "--questions", files["questions"], "--answers", str(short),
                                  "--baseline", files["baseline"], "--out", files["out"], "--cache", files["cache"]])
    assert r.exit_code == 2 and "2 question(s) have no model or baseline answer (question_id 3, 4)" in r.output
    r = CliRunner().invoke(main, ["eval", "judge", "--questions", files["questions"], "--answers", str(short),
                                  "--baseline", files["baseline"], "--out", files["out"], "--cache", files["cache"], "--skip-missing"])
    assert r.exit_code == 0 and "skipped 2 question(s)" in r.output and len(reviews(files)) == 4


def test_dry_run_estimates_and_sends_nothing(server, files):
    r = cli(files, "--dry-run")
    assert r.exit_code == 0 and server.requests == 0
    assert "judgments          8 (0 cached, 8 to send)" in r.output and "$" in r.output
    assert cli(files, "--protocol", "paper").exit_code == 0
    r = cli(files, "--dry-run")
    assert "8 (4 cached, 4 to send)" in r.output
    r = cli(files, "--dry-run", "--judge-model", "my-local-llama")
    assert "unknown (pass --price-in/--price-out)" in r.output


def test_max_cost_is_a_hard_cap_and_the_rest_resumes(server, files):
    price = (2000.0, 2000.0)  # $ per million tokens: each judgment here costs about $0.5
    run = RunOptions(backoff=FAST, progress=False, concurrency=2, max_cost=1.5, price=price)
    out = job(files, settings=JudgeSettings(max_tokens=64), run=run)
    s = out.summary
    assert s.stopped and "--max-cost" in s.stopped and 0 < s.judged < 8
    assert s.usage.cost <= 1.5
    rows = reviews(files)
    assert len(rows) == 8 and sum(r["score"] is None and r["error"].startswith("not judged") for r in rows) == 8 - s.judged
    before = server.requests
    out = job(files, settings=JudgeSettings(max_tokens=64), run=RunOptions(backoff=FAST, progress=False, price=price))
    assert server.requests - before == 8 - s.judged and all(r["score"] for r in reviews(files))
    r = cli(files, "--max-cost", "0.001", "--no-cache")
    assert r.exit_code == 3 and "cost cap" in r.output


def test_aspect_scores_as_json(server, files):
    assert cli(files, "--protocol", "paper", "--aspects").exit_code == 0
    assert server.kinds().count("aspects") == 4 and server.requests == 8
    row = reviews(files)[0]
    assert row["aspects"] == {"helpfulness": [8, 6], "relevance": [8, 6], "accuracy": [8, 6], "level_of_details": [8, 6]}


def test_base_url_flag_and_concurrency(files, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens there
    with JudgeServer(delay=0.2) as s:
        r = cli(files, "--base-url", s.openai_url, "--concurrency", "8")
    assert r.exit_code == 0, r.output
    # Requests overlapped at the server (one at a time would never hold two); speed is bench/judge.py's job.
    assert s.requests == 8 and s.max_in_flight >= 2


def _cache_rows(path):
    try:
        with sqlite3.connect(path) as db:
            return db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_killed_run_resumes_without_repeating_a_finished_judgment(server, files):
    server.push(*[("ok",)] * 5, ("hang", 20))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "vichat.cli", "eval", "judge", "--questions", files["questions"], "--answers",
           files["answers"], "--baseline", files["baseline"], "--out", files["out"], "--cache", files["cache"],
           "--concurrency", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while (server.requests < 6 or _cache_rows(files["cache"]) < 5) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.requests == 6 and _cache_rows(files["cache"]) == 5
    finally:
        proc.kill()
        proc.wait()
    finished = {s.texts[0] for s in server.answered}
    assert len(finished) == 5 and not Path(files["out"]).exists()
    n = server.requests
    r = cli(files)
    assert r.exit_code == 0, r.output
    again = [s.texts[0] for s in server.seen[n:]]
    assert len(again) == 3 and not finished & set(again), "a finished judgment was asked again"
    assert len(reviews(files)) == 8 and all(r["score"] for r in reviews(files))


def test_the_papers_answer_files_are_valid_input(server, tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("VICHAT_SHARED_DATA", str(shared_data))
    paper = shared_data / "eval" / "paper_outputs"
    out = tmp_path / "review.jsonl"
    r = CliRunner().invoke(main, ["eval", "judge", "--set", "vicuna80-vi", "--answers", str(paper / "answer_bloomz_instruct.jsonl"),
                                  "--baseline", str(paper / "answer_gpt4_instruct.jsonl"), "--out", str(out),
                                  "--protocol", "paper", "--cache", str(tmp_path / "c.sqlite")])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 80 and server.requests == 80
    assert {r["prompt_id"] for r in rows if r["category"] == "coding"} == {"vicuna-coding"}
    assert rows[0]["model_id"] == "bigscience/bloomz-7b1-mt" and rows[0]["baseline_id"] == "gpt-4-0613"


def test_third_party_judge_without_policy_is_counted_and_a_free_one_costs_nothing(files):
    """A plugin judge written from docs/plugins.md alone: no `policy`, no converse, `price=(0, 0)`."""
    import vichat.plugins as plugins_module
    from vichat.plugin import JudgeResult, JudgeSpec, hookimpl

    calls = []

    def judge(question, answer1, answer2, prompt, *, model, temperature, max_tokens, aspects, policy, registry):
        calls.append(question)
        return JudgeResult(7.0, 5.0, "7 5\nĐánh giá ngắn.")

    mod = type(sys)("free_judge")
    mod.register_judges = hookimpl(lambda register: register(JudgeSpec(
        name="free-judge", description="A judge that runs locally and costs nothing.", judge=judge,
        price=(0.0, 0.0))))
    plugins_module._registry = plugins_module.build_registry([("free-judge", mod)])
    try:
        r = cli(files, "--judge", "free-judge", "--dry-run")
        assert r.exit_code == 0, r.output
        assert "free ($0.00) typical, at most free ($0.00)" in r.output and "unknown" not in r.output
        r = cli(files, "--judge", "free-judge")
        assert r.exit_code == 0, r.output
        rows = reviews(files)
        assert len(rows) == len(calls) == 8  # swap protocol: both orders of 4 questions
        assert all(row["usage"]["requests"] == 1 for row in rows)
        assert "requests 8 answered, 8 attempts" in r.output and "cost $0.0000" in r.output
        # The judge declares no options: one passed is refused before anything is sent (dry run too).
        for extra in (["--dry-run"], []):
            r = cli(files, "--judge", "free-judge", "-o", "path=/models/x", *extra)
            assert r.exit_code != 0 and "takes no option 'path'; its options: none" in r.output
            r = cli(files, "--judge", "free-judge", "--base-url", "http://127.0.0.1:9/v1", *extra)
            assert r.exit_code != 0 and "takes no base_url" in r.output
        assert len(calls) == 8
    finally:
        plugins_module.reset_registry()


def test_limits_start_low_and_follow_what_the_server_announces(server, files):
    from vichat.evaluate.limiter import START_RPM, START_TPM

    out = job(files, protocol="paper", run=RunOptions(backoff=FAST, progress=False, concurrency=2))
    assert out.summary.limits == (10_000, 2_000_000)  # the fake server's x-ratelimit-limit-* headers
    server.limit_headers = None  # a server that announces nothing: the start values stay
    out = job(files, protocol="paper", use_cache=False, run=RunOptions(backoff=FAST, progress=False))
    assert out.summary.limits == (START_RPM, START_TPM)
    server.limit_headers = {"x-ratelimit-limit-requests": "10000", "x-ratelimit-limit-tokens": "2000000"}
    r = cli(files, "--protocol", "paper", "--no-cache", "--rpm", "60", "--tpm", "0")  # given limits are kept
    assert r.exit_code == 0, r.output
    assert "rate limit 60 requests/min, no token limit" in r.output
    r = cli(files, "--protocol", "paper", "--no-cache")
    assert "rate limit 10,000 requests/min, 2,000,000 tokens/min (announced by the server)" in r.output
    assert cli(files, "--rpm", "lots").exit_code == 2


# -- answers to another question set, output paths, exit codes, messages ------------------------

def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _generated(questions_path, set_name, model_id="bloomz-doctor"):
    """Answers as `vichat eval generate` writes them, with the question set and fingerprints recorded."""
    from vichat.evaluate.files import load_questions, question_fingerprint

    return [{"question_id": q.question_id, "text": f"đáp án {q.question_id}", "answer_id": f"{model_id}-{q.question_id}",
             "model_id": model_id, "metadata": {"question_set": set_name, "question_fingerprint": question_fingerprint(q.text)}}
            for q in load_questions(questions_path).values()]


def test_answers_to_another_question_set_are_refused_before_any_request(server, tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("VICHAT_SHARED_DATA", str(shared_data))
    eval_dir = shared_data / "eval"
    icliniq = _write(tmp_path / "answer_doctor_icliniq.jsonl", _generated(eval_dir / "icliniq100_questions_vi.jsonl", "icliniq100-vi"))
    baseline = str(eval_dir / "paper_outputs" / "answer_gpt4_instruct.jsonl")
    for extra in (["--skip-missing"], [], ["--dry-run"]):
        r = CliRunner().invoke(main, ["eval", "judge", "--set", "vicuna80-vi", "--answers", icliniq, "--baseline", baseline,
                                      "--out", str(tmp_path / "r.jsonl"), "--no-cache", *extra])
        assert r.exit_code == 2, r.output
        assert f"{icliniq} answers the questions of icliniq100-vi, not those of vicuna80-vi" in r.output
        assert "80 of its answers" in r.output and "Traceback" not in r.output
    # As the baseline too.
    ok = _write(tmp_path / "vicuna.jsonl", _generated(eval_dir / "vicuna80_questions_vi.jsonl", "vicuna80-vi", "m"))
    r = CliRunner().invoke(main, ["eval", "judge", "--set", "vicuna80-vi", "--answers", ok, "--baseline", icliniq,
                                  "--out", str(tmp_path / "r.jsonl"), "--no-cache", "--dry-run"])
    assert r.exit_code == 2 and "answers the questions of icliniq100-vi" in r.output
    assert server.requests == 0
    # Matching answers pass, and with fingerprints there is no "matched by question_id only" note;
    # the paper's file (no fingerprints) gets that note.
    r = CliRunner().invoke(main, ["eval", "judge", "--set", "vicuna80-vi", "--answers", ok, "--baseline", baseline,
                                  "--out", str(tmp_path / "r.jsonl"), "--no-cache", "--dry-run"])
    assert r.exit_code == 0, r.output
    assert f"{ok} does not record" not in r.output and f"{baseline} does not record which questions" in r.output


def test_answers_for_ids_not_in_the_set_are_reported(server, files, tmp_path):
    rows = [json.loads(line) for line in Path(files["answers"]).read_text(encoding="utf-8").splitlines()]
    rows += [{"question_id": i, "text": f"extra {i}", "answer_id": f"x{i}", "model_id": "bloomz-chat"} for i in range(100, 112)]
    files = {**files, "answers": _write(tmp_path / "more.jsonl", rows)}
    r = cli(files, "--protocol", "paper")
    assert r.exit_code == 0, r.output
    assert (f"12 answer(s) in {files['answers']} are for question ids not in q.jsonl "
            "(question_id 100, 101, 102, 103, 104, 105, 106, 107, 108, 109, …): not judged") in r.output
    r = cli(files, "--protocol", "paper", "--dry-run")
    assert "12 answer(s)" in r.output


def test_generated_answers_record_their_questions_and_a_changed_set_is_refused(server, files, tmp_path):
    from vichat.evaluate.files import load_answers

    q = tmp_path / "q_other.jsonl"
    _write(q, [{"question_id": i, "category": c, "text": t + " (khác)"} for i, c, t in QUESTIONS])
    files_gen = {**files, "answers": _write(tmp_path / "gen.jsonl", _generated(files["questions"], "q.jsonl"))}
    assert cli(files_gen, "--protocol", "paper").exit_code == 0
    assert load_answers(files_gen["answers"])[1].question_set == "q.jsonl"
    r = cli({**files_gen, "questions": str(q)}, "--protocol", "paper")
    assert r.exit_code == 2 and "answers the questions of q.jsonl, not those of q_other.jsonl" in r.output


def test_an_unwritable_out_is_refused_before_any_request(server, files, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for extra in ([], ["--dry-run"]):
        r = cli({**files, "out": str(afile / "r.jsonl")}, "--no-cache", *extra)
        assert r.exit_code == 2, r.output
        assert f"error: --out {afile / 'r.jsonl'}: {afile} is a file, not a folder" in r.output
        assert "Traceback" not in r.output and r.exception is None or isinstance(r.exception, SystemExit)
    r = cli({**files, "out": str(tmp_path)}, "--no-cache")
    assert r.exit_code == 2 and "is a directory" in r.output
    assert server.requests == 0


def test_failed_judgments_and_nothing_to_judge_exit_non_zero(server, files, tmp_path, monkeypatch):
    server.push(("text", "Both answers are decent."), ("text", "I would rather not say."))
    r = cli(files, "--protocol", "paper", "--limit", "1", "--concurrency", "1", "--no-cache")
    assert r.exit_code == 4, r.output
    assert "1 of 1 reviews have no scores (1 unreadable, 0 not judged)" in r.output
    # Nothing listens: every judgment fails to get an answer.
    r = cli(files, "--protocol", "paper", "--no-cache", "--max-retries", "0", "--base-url", "http://127.0.0.1:9/v1")
    assert r.exit_code == 4, r.output
    assert "4 of 4 reviews have no scores (0 unreadable, 4 not judged)" in r.output
    assert len(reviews(files)) == 4 and all(row["score"] is None for row in reviews(files))
    # Nothing to judge at all: an error, not a success with an empty file.
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    for extra in ([], ["--dry-run"]):
        r = cli({**files, "answers": str(empty)}, "--skip-missing", *extra)
        assert r.exit_code == 2 and "nothing to judge" in r.output, r.output
    assert cli(files, "--protocol", "paper", "--limit", "1").exit_code == 0


def test_set_and_questions_together_are_refused(server, files, shared_data, monkeypatch):
    monkeypatch.setenv("VICHAT_SHARED_DATA", str(shared_data))
    r = cli(files, "--set", "icliniq100-vi", "--dry-run")
    assert r.exit_code == 2 and "not both" in r.output and server.requests == 0


def test_skip_missing_lists_shows_the_cut_and_dry_run_counts_skips(server, shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("VICHAT_SHARED_DATA", str(shared_data))
    paper = shared_data / "eval" / "paper_outputs"
    lines = (paper / "answer_bloomz_instruct.jsonl").read_text(encoding="utf-8").splitlines()[:5]
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(lines) + "\n", encoding="utf-8")
    base = ["eval", "judge", "--set", "vicuna80-vi", "--answers", str(short), "--baseline",
            str(paper / "answer_gpt4_instruct.jsonl"), "--out", str(tmp_path / "r.jsonl"), "--protocol", "paper",
            "--cache", str(tmp_path / "c.sqlite"), "--skip-missing"]
    r = CliRunner().invoke(main, base + ["--dry-run"])
    assert r.exit_code == 0 and server.requests == 0, r.output
    assert "skipped questions  75 without both answers (question_id 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, …)" in r.output
    r = CliRunner().invoke(main, base)
    assert r.exit_code == 0, r.output
    assert "skipped 75 question(s) without both answers: question_id 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, …" in r.output


def test_summary_parts_add_up_after_a_cost_cap_stop(server, files, tmp_path):
    import re

    rows = [json.loads(line) for line in Path(files["baseline"]).read_text(encoding="utf-8").splitlines()]
    rows[0]["text"] = MODEL[1]  # identical answers: one judgment fills both orders of question 1
    files = {**files, "baseline": _write(tmp_path / "same.jsonl", rows)}
    r = cli(files, "--max-cost", "1.5", "--price-in", "2000", "--price-out", "2000", "--max-tokens", "64",
            "--concurrency", "2", "--no-cache")
    assert r.exit_code == 3, r.output
    m = re.search(r"(\d+) reviews written to .*: (\d+) with scores, (\d+) without readable scores, (\d+) not judged", r.output)
    assert m, r.output
    written, scored, unreadable, not_judged = map(int, m.groups())
    assert written == 8 and scored + unreadable + not_judged == written and not_judged > 0
    assert "1 review(s) share the judgment of the other order" in r.output
    assert [row["score"] is not None for row in reviews(files)].count(True) == scored
