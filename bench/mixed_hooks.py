"""Mixed-adapter passes: the runner's hooks (registered once) against peft's per-call hooks, one run.

Not a timed test: run it by hand with fixed threads, e.g.

    OMP_NUM_THREADS=1 .venv/bin/python bench/mixed_hooks.py --threads 1

The engine of bench/serve.py (tiny model, two random LoRA adapters and the bare base, the paper's
sampling) serves N concurrent requests, streaming, two ways that differ only in how a mixed pass's
``adapter_names`` reach the LoRA layers:

- ``runner``: vichat's ``BatchRunner``: pre-forward hooks registered once per model read the
  names of the pass in progress;
- ``peft``: the same pass given ``adapter_names=`` on the call, as peft documents: peft walks the
  model's modules to check the names and hook every LoRA layer, then removes the hooks.

The two alternate ``--repeat`` times; the medians of aggregate tokens/s and their ratio are printed.
The same requests, seeds and sampling on both sides, so both produce the same tokens (checked).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class PeftNames:
    """Stands in for the runner's model: a mixed pass's names go to peft on the call, not to the
    runner's hooks."""

    def __init__(self, model, runner) -> None:  # noqa: ANN001
        self.model, self.runner = model, runner

    def __getattr__(self, name: str):  # noqa: ANN204 - set_adapter, base_model... as the model has them
        return getattr(self.model, name)

    def __call__(self, **kwargs):  # noqa: ANN003, ANN204
        names, self.runner._mixing.names = self.runner._mixing.names, None
        if names is not None:
            kwargs["adapter_names"] = names
        return self.model(**kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tiny", default=None, help="tiny base model folder (default: a cached build, else random)")
    args = parser.parse_args()

    import torch

    import serve as bench
    from vichat.specs import Decoding

    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(tempfile.mkdtemp(prefix="vichat-mixed-hooks-"))
    base, what = bench.tiny_files(argparse.Namespace(tiny=args.tiny, dtype="float32", device="cpu"), root)
    engine = bench.throughput_engine(base, root, "tiny")
    clock = bench.TokenClock()
    dec = Decoding(max_new_tokens=args.tokens)
    jobs = [(bench.MODELS[i % 3], bench.QUESTIONS[i % len(bench.QUESTIONS)]) for i in range(args.users)]
    if len(set(jobs)) < len(jobs):
        raise SystemExit(f"--users {args.users}: some requests would repeat; the answers are compared per request")
    runner = engine.prepare().scheduler.runner
    sides = {"runner": runner.model, "peft": PeftNames(runner.model, runner)}
    texts: dict[str, dict[tuple[str, str], str]] = {}
    lock = threading.Lock()

    def run(side: str) -> float:
        runner.model = sides[side]
        got: dict[tuple[str, str], str] = {}

        def start(name: str, question: str):  # noqa: ANN202
            with lock:
                got[(name, question)] = ""
            for delta in engine.stream(name, question, decoding=dec):
                got[(name, question)] += delta
                yield delta

        tps = bench.concurrent(start, jobs, clock)["tps"]
        texts.setdefault(side, got)
        if got != texts[side]:
            raise SystemExit(f"{side}: the answers changed between repeats")
        return tps

    print(f"tiny model: {what}; {args.users} concurrent requests (chat, doctor adapters + bare base), "
          f"{args.tokens} new tokens max, torch threads {torch.get_num_threads()}", flush=True)
    run("runner")  # warm-up
    tps: dict[str, list[float]] = {side: [] for side in sides}
    for _ in range(args.repeat):
        for side in sides:
            tps[side].append(run(side))
    runner.model = sides["runner"]
    engine.close()
    for side, values in tps.items():
        print(f"{side:<7} tokens/s median {statistics.median(values):7.1f}   runs {[round(v) for v in values]}")
    print(f"runner / peft = {statistics.median(tps['runner']) / statistics.median(tps['peft']):.2f}x; "
          f"same answers: {'yes' if texts['runner'] == texts['peft'] else 'NO'}")


if __name__ == "__main__":
    main()
