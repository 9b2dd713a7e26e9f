"""Host-side cost of one decoding pass, by how the batch's rows use adapters: a proxy for a GPU.

Not a timed test: run it by hand with fixed threads, e.g.

    OMP_NUM_THREADS=1 .venv/bin/python bench/pass_overhead.py --threads 1

On a GPU a decoding pass of a small model costs about what the host spends issuing its operators
(the weights of bloomz-560m are read in about 0.25 ms on an H200). This bench takes a "skinny"
BLOOM: bloomz-560m's 24 layers and 16 heads at hidden size 64 (the operators of a 560m pass, little
arithmetic), two random LoRA adapters (r=8 on query_key_value), 8 rows in a KV cache, and times
one decoding pass through the engine's ``BatchRunner.forward`` four ways, alternating:

- ``bare``: every row on the bare base (adapter layers off);
- ``one``: every row on one adapter (``set_adapter``, no ``adapter_names``);
- ``mixed``: the rows mixing both adapters and the bare base, names passed by the runner's hooks
  (registered once per model);
- ``mixed-peft``: the same, names given to peft on the call (peft hooks every LoRA layer per call).

For each it prints the median time per pass and the number of torch operators the pass dispatches
(counted with a ``TorchDispatchMode``: roughly the kernels a GPU would be sent). On a GPU
(``--device cuda``, bfloat16) the passes are synchronised before and after timing; there the real
bloomz-560m width (``--hidden 1024``) measures what a mixed batch costs against one adapter.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def count_ops(fn) -> int:  # noqa: ANN001
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
            Counter.n += 1
            return func(*args, **(kwargs or {}))

    with Counter():
        fn()
    return Counter.n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--passes", type=int, default=30, help="timed passes per way (alternating)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda: where the model runs")
    parser.add_argument("--dtype", default=None, help="default: float32 on a CPU, bfloat16 on a GPU")
    args = parser.parse_args()

    import torch

    import serve as bench
    from mixed_hooks import PeftNames

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = args.dtype or ("bfloat16" if torch.device(args.device).type == "cuda" else "float32")
    root = Path(tempfile.mkdtemp(prefix="vichat-pass-overhead-"))
    base = bench.random_bloom(root / "skinny", args.hidden, args.layers, args.heads, None, init=1.0, dtype=dtype,
                              device=args.device)
    engine = bench.throughput_engine(base, root, "skinny", device=args.device, dtype=dtype)
    loaded = engine.prepare()
    runner = loaded.scheduler.runner
    chat, doctor = loaded.keys["chat"], loaded.keys["doctor"]
    rows = args.rows
    ways = {"bare": [None] * rows, "one": [chat] * rows,
            "mixed": [(chat, doctor, None)[i % 3] for i in range(rows)]}
    ways["mixed-peft"] = ways["mixed"]
    model, peft_names = runner.model, PeftNames(runner.model, runner)

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (rows, 64), generator=g)
    mask = torch.ones_like(ids)
    cache = runner.new_cache()
    runner.forward(ids, mask, cache, ways["mixed"])  # prefill
    token = torch.randint(0, 1000, (rows, 1), generator=g)

    def one_pass(way: str) -> None:
        nonlocal mask
        runner.model = peft_names if way == "mixed-peft" else model
        mask = torch.cat([mask, torch.ones(rows, 1, dtype=torch.long)], dim=1)
        try:
            runner.forward(token, mask, cache, ways[way])
        finally:
            runner.model = model

    ops = {way: count_ops(lambda w=way: one_pass(w)) for way in ways}
    for way in ways:  # warm-up
        one_pass(way)
    times: dict[str, list[float]] = {way: [] for way in ways}
    for _ in range(args.passes):
        for way in ways:
            bench.synchronize(args.device)
            t0 = time.perf_counter()
            one_pass(way)
            bench.synchronize(args.device)  # a GPU pass is done when its kernels are, not when Python returns
            times[way].append((time.perf_counter() - t0) * 1e3)
    engine.close()
    med = {way: statistics.median(v) for way, v in times.items()}
    print(f"BLOOM {args.layers} layers x hidden {args.hidden}, {args.heads} heads, 2 LoRA adapters r=8; {rows} rows; "
          f"{bench.describe_device(args.device, dtype)}; median of {args.passes} passes each, alternating")
    print(f"{'way':<12}{'ms/pass':>9}{'ops/pass':>10}{'vs one':>9}")
    for way in ways:
        print(f"{way:<12}{med[way]:>9.2f}{ops[way]:>10}{med[way] / med['one']:>8.2f}x")


if __name__ == "__main__":
    main()
