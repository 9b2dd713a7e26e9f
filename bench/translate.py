"""Benchmark: `vichat translate` against one request per record, through a loopback server.

Both sides use the real google plugin (httpx, Translation v2 JSON) against a local server that
answers every request after --latency seconds (plus --ms-per-kchar per 1,000 characters, to model
a server whose work grows with the batch). Measured in one run:

  baseline   one request per record (its non-empty fields), in sequence, no cache
  vichat     translate_file: batches, dedupe, cold cache; with -j 1, then --concurrency
  rerun      translate_file again on the warm cache (goal: 0 requests)
  peer       what a practitioner writes around the same plugin: read the input file (json.load),
             then a ThreadPoolExecutor with the same concurrency sending exactly the batches vichat
             sends (same texts, same grouping; taken from an untimed dry plan), results kept in a
             dict; no cache, no protection, no output file. Run --repeat times, interleaved with
             vichat's cold run (a fresh cache each time): vichat / peer is what the shared job
             runner costs next to the requests (goal: >= 0.9x). The peer's reading time is printed
             apart, so the ratio against its sending alone can be read off too.

Not a timed test: run it by hand, e.g.
  .venv/bin/python bench/translate.py --input /work/shared/data/en_reference/alpaca_data_first2000_en.json -n 400
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the loopback server lives with the tests

DEFAULT_INPUT = REPO.parent / "shared" / "data" / "en_reference" / "alpaca_data_first2000_en.json"
FIELDS = ("instruction", "input", "output")


def generated(n: int) -> Path:
    """Synthetic records when the shared data is not at hand."""
    import json

    path = Path(tempfile.gettempdir()) / f"vichat-bench-generated-{n}.jsonl"
    topics = ["rivers", "bread", "planets", "music", "trains", "forests", "tea", "bridges"]
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            t = topics[i % len(topics)]
            fh.write(json.dumps({
                "instruction": f"Write a short note about {t} for reader {chr(65 + i % 26)}{chr(65 + i // 26 % 26)}.",
                "input": "" if i % 2 else f"The note is about {t}.",
                "output": f"Here is a note about {t}. " * 6,
            }) + "\n")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", type=Path, default=None, help=f"records to translate [default: {DEFAULT_INPUT} if present]")
    ap.add_argument("-n", type=int, default=400, help="number of records")
    ap.add_argument("--latency", type=float, default=0.05, help="server answer delay per request, seconds")
    ap.add_argument("--ms-per-kchar", type=float, default=0.0, help="extra server delay per 1,000 characters")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=7, help="interleaved peer / vichat cold pairs")
    args = ap.parse_args()

    from translate_servers import FakeServer
    from vichat.data.readers import read_rows
    from vichat.plugins import get_registry
    from vichat.translate.job import translate_file

    src = args.input or (DEFAULT_INPUT if DEFAULT_INPUT.exists() else generated(args.n))
    rows = [r.data for r in itertools.islice(read_rows(src), args.n)]
    tmp = tempfile.TemporaryDirectory(prefix="vichat-bench-")  # removed at exit
    work = tmp.name
    os.environ["VICHAT_CACHE_DIR"] = work  # never touch the user's cache
    os.environ["GOOGLE_API_KEY"] = "bench"
    spec = get_registry().translator("google")
    chars = sum(len(r.get(f) or "") for r in rows for f in FIELDS)

    with FakeServer(delay=args.latency, delay_per_char=args.ms_per_kchar / 1e6) as server:
        os.environ["VICHAT_GOOGLE_TRANSLATE_URL"] = server.google_url
        spec.translate(["warm up"], "en", "vi", **spec.options)  # connection set-up is not what we measure
        start_requests = server.requests

        t0 = time.perf_counter()
        for row in rows:
            texts = [row[f] for f in FIELDS if row.get(f)]
            if texts:
                spec.translate(texts, "en", "vi", **spec.options)
        base_time = time.perf_counter() - t0
        base_requests = server.requests - start_requests

        out = Path(work) / "out.jsonl"
        # Wall time of the whole call: reading, protecting, cache look-ups and writing included.
        before, t0 = server.requests, time.perf_counter()
        cold = translate_file(src, out, spec, limit=args.n, concurrency=args.concurrency, progress=False)
        cold_time, cold_requests = time.perf_counter() - t0, server.requests - before

        # Batching and dedupe alone (one request in flight), on a fresh in-memory cache.
        before, t0 = server.requests, time.perf_counter()
        translate_file(src, Path(work) / "serial.jsonl", spec, limit=args.n, concurrency=1, cache=False, progress=False)
        serial_time, serial_requests = time.perf_counter() - t0, server.requests - before

        before, t0 = server.requests, time.perf_counter()
        warm = translate_file(src, out, spec, limit=args.n, concurrency=args.concurrency, progress=False)
        warm_time, warm_requests = time.perf_counter() - t0, server.requests - before

        # The peer sends exactly vichat's batches: the network part is the same, the rest is overhead.
        batches = planned_batches(spec, rows)
        pairs = []
        for r in range(args.repeat):
            before, c0, t0 = server.requests, time.process_time(), time.perf_counter()
            records = load_records(src, args.n)
            read_time = time.perf_counter() - t0
            peer_results = peer(spec, batches, args.concurrency)
            peer_time, peer_requests = time.perf_counter() - t0, server.requests - before
            peer_cpu = time.process_time() - c0
            assert len(records) == len(rows) and len(peer_results) == len({t for b in batches for t in b})
            before, c0, t0 = server.requests, time.process_time(), time.perf_counter()
            translate_file(src, Path(work) / f"cold-{r}.jsonl", spec, limit=args.n, concurrency=args.concurrency,
                           cache=Path(work) / f"cold-{r}.sqlite", progress=False)
            again_time, again_requests = time.perf_counter() - t0, server.requests - before
            again_cpu = time.process_time() - c0
            pairs.append((read_time, peer_time, peer_requests, again_time, again_requests, peer_cpu, again_cpu))

    n = len(rows)
    table = [
        ("baseline: 1 request/record, sequential", base_requests, base_time),
        ("vichat translate (cold cache, -j 1: batching only)", serial_requests, serial_time),
        (f"vichat translate (cold cache, -j {args.concurrency})", cold_requests, cold_time),
        ("vichat translate (warm rerun)", warm_requests, warm_time),
    ]
    print(f"input: {src} ({n} records, {chars:,} characters)")
    print(f"server: 127.0.0.1, {args.latency * 1000:g} ms per request + {args.ms_per_kchar:g} ms per 1,000 characters")
    print()
    print(f"{'method':<50} {'requests':>9} {'seconds':>9} {'records/s':>10} {'speed-up':>9}")
    for name, reqs, secs in table:
        rate = n / secs if secs else float("inf")
        print(f"{name:<50} {reqs:>9} {secs:>9.3f} {rate:>10.1f} {base_time / secs if secs else float('inf'):>8.1f}x")
    ratio = base_time / cold_time
    print()
    print(f"throughput ratio (cold vichat / baseline): {ratio:.1f}x  (goal >= 10x: {'met' if ratio >= 10 else 'NOT met'})")
    print(f"requests on warm rerun: {warm_requests}  (goal 0: {'met' if warm_requests == 0 else 'NOT met'})")
    print(f"cold run: {cold.translated} segments translated, {cold.skipped} with nothing to translate, {cold.failed} failed; "
          f"warm run: {warm.from_cache} from cache")
    print()
    print(f"shared job runner vs a thread-pool peer (-j {args.concurrency}, the same {len(batches)} batches, "
          f"{args.repeat} interleaved pairs, fresh cache each)")
    print(f"{'pair':>4} {'peer s':>8} {'of which read':>14} {'peer req':>9} {'vichat s':>9} {'vichat req':>11} "
          f"{'vichat/peer':>12} {'vs sending only':>16} {'CPU s peer':>11} {'CPU s vichat':>13}")
    ratios, strict = [], []
    for r, (rt, pt, pr, vt, vr, pc, vc) in enumerate(pairs, 1):
        ratios.append(pt / vt)
        strict.append((pt - rt) / vt)
        print(f"{r:>4} {pt:>8.3f} {rt:>14.3f} {pr:>9} {vt:>9.3f} {vr:>11} {pt / vt:>11.2f}x {(pt - rt) / vt:>15.2f}x "
              f"{pc:>11.3f} {vc:>13.3f}")
    median, low, high = spread(ratios)
    print(f"throughput ratio vichat / peer: median {median:.2f}x, range {low:.2f}-{high:.2f}x  "
          f"(goal >= 0.9x: {'met' if median >= 0.9 else 'NOT met'})")
    median, low, high = spread(strict)
    print(f"the same against the peer's sending alone (its file reading left out): median {median:.2f}x, "
          f"range {low:.2f}-{high:.2f}x")
    extra = spread([p[6] - p[5] for p in pairs])[0]
    print(f"CPU time of the whole process (loopback server included) above the peer's: median {extra * 1000:.0f} ms "
          f"({extra / len(rows) * 1000:.3f} ms per record)")


def spread(values: list[float]) -> tuple[float, float, float]:
    """Median, lowest and highest."""
    v = sorted(values)
    mid = len(v) // 2
    return (v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2), v[0], v[-1]


def load_records(path: Path, n: int) -> list[dict]:
    """The peer reads its input the plain way: json.load, or one json.loads per JSONL line."""
    import json

    with open(path, encoding="utf-8") as fh:
        if path.suffix == ".json":
            return json.load(fh)[:n]
        return [json.loads(line) for line in itertools.islice(fh, n)]


def planned_batches(spec, rows: list[dict]) -> list[list[str]]:
    """The texts of each request vichat sends for ``rows`` on a cold cache (a dry plan; nothing sent)."""
    from vichat.translate.cache import TranslationCache
    from vichat.translate.engine import Engine

    engine = Engine(spec, "en", "vi", TranslationCache(":memory:"))
    for row in rows:
        for f in FIELDS:
            if isinstance(row.get(f), str):
                engine.add(row[f])
    engine.plan()
    return engine.batch_texts()


def peer(spec, batches: list[list[str]], concurrency: int) -> dict[str, str]:
    """The thread-pool script: the same batches through the same plugin function, results in a dict."""
    from concurrent.futures import ThreadPoolExecutor

    results: dict[str, str] = {}
    with ThreadPoolExecutor(concurrency) as pool:
        for texts, out in zip(batches, pool.map(lambda b: spec.translate(b, "en", "vi", **spec.options), batches)):
            results.update(zip(texts, out))
    return results


if __name__ == "__main__":
    main()
