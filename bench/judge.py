"""Benchmark: `vichat eval judge` with its defaults against one request at a time.

Judges the 80 Vietnamese Vicuna questions in both orders (160 judgments) with the real openai
judge plugin and client, against a loopback OpenAI-compatible server that answers each request
after --latency seconds. Measured in one run, each cold run on a fresh cache:

  baseline   --concurrency 1 (one request at a time)
  vichat     the project's defaults (--concurrency 16), rate limits set high enough not to bind
  defaults   the same with the default limits as well (500 requests/min, 300k tokens/min)
  rerun      the vichat run again on its warm cache (goal: 0 requests)
  peer       what a practitioner writes: read the questions and answers and build the prompts (with
             vichat's loaders and prompt), then a ThreadPoolExecutor of 16 sending each pair's prompt
             through the same plugin client (the openai plugin's sender), scores parsed, results
             kept in a dict; no cache, no limiter, no output file. Run --repeat times, interleaved
             with vichat's -j 16 cold run (a fresh cache each time): vichat / peer is what the
             shared job runner costs next to the requests (goal: >= 0.9x).

Not a timed test: run it by hand, e.g.
  .venv/bin/python bench/judge.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the loopback server lives with the tests

SHARED = Path(os.environ.get("VICHAT_SHARED_DATA") or REPO.parent / "shared" / "data") / "eval"


def inputs(tmp: Path) -> tuple[Path, Path, Path, str]:
    """Questions, model answers and baseline answers: the paper's when present, else synthetic."""
    q, a, b = (SHARED / "vicuna80_questions_vi.jsonl", SHARED / "paper_outputs" / "answer_bloomz_instruct.jsonl",
               SHARED / "paper_outputs" / "answer_gpt35_instruct.jsonl")
    if q.exists() and a.exists() and b.exists():
        return q, a, b, "the paper's vicuna80 questions, Bloomz-Chat answers vs ChatGPT answers"
    rows = [(i, f"Câu hỏi số {i} về chủ đề {i % 9}?") for i in range(1, 81)]
    for path, text in ((tmp / "q.jsonl", "question"), (tmp / "a.jsonl", "model"), (tmp / "b.jsonl", "baseline")):
        with open(path, "w", encoding="utf-8") as f:
            for i, t in rows:
                obj = {"question_id": i, "category": "generic", "text": t} if text == "question" else \
                      {"question_id": i, "text": f"Trả lời {text} {i}: " + "nội dung " * (20 + i % 30)}
                f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    return tmp / "q.jsonl", tmp / "a.jsonl", tmp / "b.jsonl", "80 synthetic questions (shared data not found)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.2, help="server answer delay per request, seconds")
    ap.add_argument("--protocol", default="swap", choices=["swap", "paper"])
    ap.add_argument("--repeat", type=int, default=5, help="interleaved peer / vichat cold pairs")
    args = ap.parse_args()

    from openai_server import JudgeServer
    from vichat.evaluate.jobs import JudgeJob, judge_job
    from vichat.plugins import get_registry
    from vichat.evaluate.runner import RunOptions

    tmp = Path(tempfile.mkdtemp(prefix="vichat-bench-judge-"))
    q, a, b, what = inputs(tmp)
    unbound = {"rpm": 1e9, "tpm": 1e12, "adaptive_limits": False, "progress": False}
    runs = [
        ("baseline: one request at a time (-j 1)", RunOptions(concurrency=1, **unbound), "c1"),
        ("vichat defaults (-j 16), limits not binding", RunOptions(**unbound), "c16"),
        ("vichat defaults (auto limits: start low, follow the server)", RunOptions(progress=False), "cdef"),
        ("vichat warm rerun (cache of the -j 16 run)", RunOptions(**unbound), "c16"),
    ]
    results = []
    with JudgeServer(delay=args.latency) as server:
        os.environ["OPENAI_API_KEY"] = "sk-bench"
        os.environ["OPENAI_BASE_URL"] = server.openai_url
        for label, opts, cache in runs:
            before = server.requests
            start = time.monotonic()
            out = judge_job(JudgeJob(q, a, b, tmp / f"reviews-{cache}.jsonl", protocol=args.protocol,
                                     cache=tmp / f"{cache}.sqlite", run=opts, judge=get_registry().judge("openai")))
            elapsed = time.monotonic() - start
            results.append((label, server.requests - before, elapsed, len(out.tasks), out.failed))

        pairs = []
        for r in range(args.repeat):
            before, c0, start = server.requests, time.process_time(), time.monotonic()
            tasks = planned_tasks(q, a, b, args.protocol)
            scores = peer(tasks, 16)
            peer_time, peer_requests = time.monotonic() - start, server.requests - before
            peer_cpu = time.process_time() - c0
            before, c0, start = server.requests, time.process_time(), time.monotonic()
            out = judge_job(JudgeJob(q, a, b, tmp / f"reviews-pair{r}.jsonl", protocol=args.protocol,
                                     cache=tmp / f"pair{r}.sqlite", run=RunOptions(**unbound),
                                     judge=get_registry().judge("openai")))
            vichat_time, vichat_requests = time.monotonic() - start, server.requests - before
            vichat_cpu = time.process_time() - c0
            pairs.append((peer_time, peer_requests, vichat_time, vichat_requests, peer_cpu, vichat_cpu))
            assert len(scores) == len({t.key for t in out.tasks}), "the peer judged other pairs"

    print(f"input: {what} ({results[0][3]} judgments, protocol {args.protocol})")
    print(f"server: 127.0.0.1, {args.latency * 1000:.0f} ms per request; judge: openai plugin, gpt-4 settings\n")
    print(f"{'method':60s} {'requests':>9s} {'seconds':>9s} {'judgments/s':>12s} {'speed-up':>9s}")
    base = results[0][2]
    for label, requests, secs, n, _ in results:
        print(f"{label:60s} {requests:9d} {secs:9.3f} {n / secs:12.1f} {base / secs:8.1f}x")
    ratio = base / results[1][2]
    print(f"\nwall-time ratio (one at a time / vichat defaults): {ratio:.1f}x  (goal >= 8x: {'met' if ratio >= 8 else 'NOT met'})")
    warm = results[3][1]
    print(f"requests on warm rerun: {warm}  (goal 0: {'met' if warm == 0 else 'NOT met'})")
    print(f"unreadable reviews: {', '.join(str(r[4]) for r in results)}")
    print(f"\nshared job runner vs a thread-pool peer (-j 16, the same {len(tasks)} prompts, "
          f"{args.repeat} interleaved pairs, fresh cache each)")
    print(f"{'pair':>4} {'peer s':>8} {'peer req':>9} {'vichat s':>9} {'vichat req':>11} {'vichat/peer':>12} "
          f"{'CPU s peer':>11} {'CPU s vichat':>13}")
    ratios = []
    for r, (pt, pr, vt, vr, pc, vc) in enumerate(pairs, 1):
        ratios.append(pt / vt)
        print(f"{r:>4} {pt:>8.3f} {pr:>9} {vt:>9.3f} {vr:>11} {pt / vt:>11.2f}x {pc:>11.3f} {vc:>13.3f}")
    ratios.sort()
    mid = len(ratios) // 2
    median = ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2
    print(f"throughput ratio vichat / peer: median {median:.2f}x, range {ratios[0]:.2f}-{ratios[-1]:.2f}x  "
          f"(goal >= 0.9x: {'met' if median >= 0.9 else 'NOT met'})")
    extra = sorted(p[5] - p[4] for p in pairs)[len(pairs) // 2]
    print(f"CPU time of the whole process (loopback server included) above the peer's: median {extra * 1000:.0f} ms "
          f"({extra / len(tasks) * 1000:.3f} ms per judgment)")


def planned_tasks(q: Path, a: Path, b: Path, protocol: str) -> list:
    """The distinct judgments of the run, with their prompts (built the way vichat builds them)."""
    from vichat.evaluate.files import default_category, load_answers, load_questions
    from vichat.evaluate.judge import JudgeSettings, plan_tasks
    from vichat.evaluate.prompts import load_prompts

    settings = JudgeSettings(model="gpt-4")
    tasks, _ = plan_tasks(load_questions(q, default_category(q)), load_answers(a), load_answers(b), protocol=protocol,
                          prompts=load_prompts(), prompt_set="vicuna", settings=settings)
    return list({t.key: t for t in tasks}.values())


def peer(tasks: list, concurrency: int) -> dict[str, tuple]:
    """The thread-pool script: each prompt through the plugin's client, scores parsed, results in a dict."""
    from concurrent.futures import ThreadPoolExecutor

    from vichat.evaluate.judge import JUDGE_MAX_TOKENS, JUDGE_TEMPERATURE
    from vichat.evaluate.parse import parse_scores
    from vichat_plugins.openai_judge import make_sender

    send = make_sender("gpt-4", temperature=JUDGE_TEMPERATURE, max_tokens=JUDGE_MAX_TOKENS, base_url=None, timeout=120.0)

    def judge(t) -> tuple:
        parsed = parse_scores(send(t.prompt.messages(t.question.text, t.answer1.text, t.answer2.text)).text, t.prompt.output)
        return parsed.score1, parsed.score2

    with ThreadPoolExecutor(concurrency) as pool:
        return dict(zip((t.key for t in tasks), pool.map(judge, tasks)))


if __name__ == "__main__":
    main()
