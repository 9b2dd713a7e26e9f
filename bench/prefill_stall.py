"""A long prompt arriving while others stream: how long their streams stop, and its first token.

Not a timed test: run it by hand with fixed threads, e.g.

    OMP_NUM_THREADS=1 .venv/bin/python bench/prefill_stall.py --threads 1
    OMP_NUM_THREADS=1 .venv/bin/python bench/prefill_stall.py --threads 1 --models 560m --users 2 \\
        --prompt-tokens 300 --running-tokens 60 --repeat 1

The engine of bench/serve.py (tiny model by default, two random LoRA adapters and the bare base)
streams ``--users`` answers; once each has produced a few tokens, one more request arrives with a
long question (``--prompt-tokens`` tokens). While the others decode, the engine reads that prompt
in chunks of ``prefill_chunk`` tokens, one chunk between two decoding steps. The run tries each
``--chunks`` value in turn (alternating, ``--repeat`` times) and prints, as medians: the longest
pause in the running streams between the newcomer's arrival and its first token (a reader of
those answers sees it as a stall), their median time per token over that window, and the
newcomer's time to first token. It is the trade-off ``prefill_chunk`` sets: small chunks keep the
streams moving but each pass also pays for reading the weights (about one decoding step where
steps are memory-bound), so the newcomer waits longer.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=600, help="about how long the newcomer's prompt is")
    parser.add_argument("--chunks", type=int, nargs="+", default=[16, 64, 256], help="prefill_chunk values to try")
    parser.add_argument("--running-tokens", type=int, default=400,
                        help="max new tokens of the running streams (they must outlast the newcomer's prefill)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--models", choices=("tiny", "560m"), default="tiny")
    parser.add_argument("--tiny", default=None)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch

    import serve as bench
    from vichat.specs import Decoding

    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="vichat-prefill-stall-"))
    if args.models == "tiny":
        base, what = bench.tiny_files(argparse.Namespace(tiny=args.tiny, dtype="float32", device="cpu"), root)
    else:
        base, what = bench.random_bloom(root / "560m", 1024, 24, 16, 250880), "random weights, bloomz-560m shape"
    engine = bench.throughput_engine(base, root, args.models)
    loaded = engine.prepare()
    scheduler = loaded.scheduler
    tok = loaded.tokenizer
    sentence = "Tôi bị đau đầu, sốt nhẹ và ho khan ba ngày nay, tôi nên làm gì và khi nào cần gặp bác sĩ? "
    long_q = sentence * max(1, args.prompt_tokens // max(1, len(tok.encode(sentence))))
    clock = bench.TokenClock()
    running_dec, new_dec = Decoding(max_new_tokens=args.running_tokens), Decoding(max_new_tokens=4)

    def run(chunk: int) -> dict:
        scheduler.prefill_chunk = chunk
        clock.take()
        streams = [engine.stream(bench.MODELS[i % 3], bench.QUESTIONS[i % len(bench.QUESTIONS)], decoding=running_dec)
                   for i in range(args.users)]
        threads = [threading.Thread(target=lambda s=s: list(s)) for s in streams]
        for t in threads:
            t.start()
        while len(clock.times) < args.users or any(len(v) < 5 for v in list(clock.times.values())[: args.users]):
            time.sleep(0.002)
        arrived = time.perf_counter()
        list(engine.stream("doctor", long_q, decoding=new_dec))  # its token times come from the clock
        for t in threads:
            t.join()
        times = clock.take()
        new_times = times[-1] if len(times) > args.users else []
        first_token = new_times[0] if new_times else time.perf_counter()
        gaps, window = [], []
        for ts in times[: args.users]:
            seen = [t for t in ts if arrived <= t <= first_token]
            before = [t for t in ts if t < arrived]
            edge = ([before[-1]] if before else []) + seen + [t for t in ts if t > first_token][:1]
            gaps += [b - a for a, b in zip(edge, edge[1:])]
            window += [b - a for a, b in zip(seen, seen[1:])]
        return {"stall": max(gaps) if gaps else float("nan"),
                "tpot": statistics.median(window) if window else float("nan"),
                "ttft": first_token - arrived}

    prompt_len = len(tok.encode(long_q))
    run(args.chunks[-1])  # warm-up
    results: dict[int, list[dict]] = {c: [] for c in args.chunks}
    for _ in range(args.repeat):
        for chunk in args.chunks:
            results[chunk].append(run(chunk))
    engine.close()
    print(f"{args.models}: {what}; {args.users} streams running, a newcomer with a {prompt_len}-token question "
          f"arrives; torch threads {torch.get_num_threads()}; median of {args.repeat}; times in ms")
    print(f"{'prefill_chunk':>13}{'longest pause':>15}{'TPOT meanwhile':>16}{'newcomer TTFT':>15}")
    for chunk, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) * 1e3 for k in ("stall", "tpot", "ttft")}
        print(f"{chunk:>13}{med['stall']:>15.0f}{med['tpot']:>16.1f}{med['ttft']:>15.0f}")


if __name__ == "__main__":
    main()
