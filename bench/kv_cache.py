"""The serving engine's KV cache against transformers' caches: time per decoding step, one run.

Not a timed test: run it by hand with fixed threads, e.g.

    OMP_NUM_THREADS=1 .venv/bin/python bench/kv_cache.py --threads 1

For each model shape, context length and batch size, a random prompt of the context's length is
prefilled once, its keys and values copied into each kind of cache for every row of the batch, then
``--steps`` greedy decoding steps are timed with each cache:

- ``dynamic``: transformers' ``DynamicCache`` (what ``generate`` uses by default): every step
  appends one position to every layer with ``torch.cat``, a copy of the whole cache;
- ``vichat``: the engine's cache (``BatchRunner.new_cache``: full-attention layers are
  ``GrowingLayer``s that write in place and copy once per ``GROW_BLOCK`` tokens);
- ``static``: transformers' ``StaticCache`` sized for the run, where the model runs with it (it
  fixes the batch and the length when made, so the engine, whose rows join and leave, cannot use
  it; it is shown as the bound of "no copies at all"). BLOOM fails with it; the error is printed.

Every step goes through the engine's own ``BatchRunner.forward`` (mask-derived positions,
``logits_to_keep=1``). The kinds alternate within each repeat and the medians are printed, with
the ratio dynamic / vichat measured in the same run, and whether every kind produced the same
greedy tokens (it must). On a GPU pass ``--device cuda`` (steps are synchronised before timing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = {
    # name: (family, hidden, layers, heads, vocab)
    "tiny": ("bloom", 256, 4, 4, 8000),
    "bloom-560m": ("bloom", 1024, 24, 16, 250880),
    "gptj-1024": ("gptj", 1024, 8, 16, 50400),
}


def build(shape: str, device: str, dtype: str):  # noqa: ANN201
    import torch
    from transformers import BloomConfig, BloomForCausalLM, GPTJConfig, GPTJForCausalLM

    family, hidden, layers, heads, vocab = SHAPES[shape]
    torch.manual_seed(0)
    if family == "bloom":
        config = BloomConfig(vocab_size=vocab, hidden_size=hidden, n_layer=layers, n_head=heads)
        cls = BloomForCausalLM
    else:
        config = GPTJConfig(vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, rotary_dim=hidden // heads,
                            n_positions=4096)
        cls = GPTJForCausalLM
    with torch.device(device):
        model = cls(config)
    return model.to(getattr(torch, dtype)).eval()


def make_cache(kind: str, runner, batch: int, length: int):  # noqa: ANN001, ANN201
    from transformers import DynamicCache, StaticCache

    if kind == "dynamic":
        return DynamicCache(config=runner.config)
    if kind == "vichat":
        return runner.new_cache()
    return StaticCache(config=runner.config, max_cache_len=length)


def sync(device: str) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def prefill(runner, prompt):  # noqa: ANN001, ANN201
    """One prompt's keys and values per layer, and its first greedy token."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=runner.config)
    logits = runner.forward(prompt, torch.ones_like(prompt), cache, [None])
    return [(layer.keys, layer.values) for layer in cache.layers], logits.argmax(-1, keepdim=True).cpu()


def decode(runner, kind: str, filled, first, batch: int, steps: int, device: str):  # noqa: ANN001, ANN201
    """``batch`` copies of the prefilled prompt in a ``kind`` cache, then ``steps`` timed greedy steps:
    (ms per step, the tokens drawn)."""
    import torch

    width = filled[0][0].shape[-2]
    cache = make_cache(kind, runner, batch, width + steps + 1)
    for i, (k, v) in enumerate(filled):
        cache.update(k.expand(batch, -1, -1, -1).contiguous(), v.expand(batch, -1, -1, -1).contiguous(), i)
    mask = torch.ones(batch, width, dtype=torch.long)
    adapters = [None] * batch
    token = first.expand(batch, 1).contiguous()
    drawn = [token]
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=torch.long)], dim=1)
        token = runner.forward(token, mask, cache, adapters).argmax(-1, keepdim=True).cpu()
        drawn.append(token)
    sync(device)
    return (time.perf_counter() - t0) / steps * 1e3, torch.cat(drawn, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["tiny", "bloom-560m", "gptj-1024"])
    parser.add_argument("--batch", type=int, nargs="+", default=[8])
    parser.add_argument("--context", type=int, nargs="+", default=[128, 512, 1024],
                        help="prompt length before the timed steps")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: float32 on a CPU, bfloat16 on a GPU")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write every row here (rewritten after each row)")
    args = parser.parse_args()

    import torch

    from vichat.serve.runner import GROW_BLOCK, BatchRunner

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = args.dtype or ("bfloat16" if torch.device(args.device).type == "cuda" else "float32")
    kinds = ("dynamic", "vichat", "static")
    rows: list[dict] = []
    print(f"device {args.device}, {dtype}, torch threads {torch.get_num_threads()}, {args.steps} timed steps, "
          f"median of {args.repeat}; GROW_BLOCK {GROW_BLOCK}; ms per decoding step", flush=True)
    print(f"{'shape':<12}{'batch':>6}{'context':>8}{'dynamic':>10}{'vichat':>10}{'static':>10}"
          f"{'dyn/vichat':>12}  same tokens")
    for shape in args.shapes:
        model = build(shape, args.device, dtype)
        runner = BatchRunner(model)
        vocab = SHAPES[shape][4]
        told: set[str] = set()  # a cache kind's failure is printed once per shape
        for context in args.context:
            g = torch.Generator().manual_seed(context)
            filled, first = prefill(runner, torch.randint(0, vocab, (1, context), generator=g))
            for batch in args.batch:
                times: dict[str, list[float]] = {k: [] for k in kinds}
                tokens: dict[str, object] = {}
                failed: dict[str, str] = {}
                decode(runner, "vichat", filled, first, batch, 2, args.device)  # warm-up
                for _ in range(args.repeat):
                    for kind in kinds:
                        if kind in failed:
                            continue
                        try:
                            ms, drawn = decode(runner, kind, filled, first, batch, args.steps, args.device)
                        except Exception as exc:  # noqa: BLE001 - StaticCache on BLOOM: reported, not fatal
                            failed[kind] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                            continue
                        times[kind].append(ms)
                        tokens[kind] = drawn
                med = {k: statistics.median(v) for k, v in times.items() if v}
                same = all(torch.equal(tokens["dynamic"], t) for t in tokens.values())
                cells = "".join(f"{med[k]:>10.1f}" if k in med else f"{'failed':>10}" for k in kinds)
                print(f"{shape:<12}{batch:>6}{context:>8}{cells}{med['dynamic'] / med['vichat']:>11.2f}x  "
                      f"{'yes' if same else 'NO'}", flush=True)
                rows.append({"shape": shape, "batch": batch, "context": context, "device": args.device, "dtype": dtype,
                             "ms_per_step": med, "dynamic_over_vichat": med["dynamic"] / med["vichat"],
                             "same_tokens": same, "failed": failed})
                if args.json is not None:
                    args.json.write_text(json.dumps(rows, indent=1))
                for kind, why in failed.items():
                    if kind not in told:
                        told.add(kind)
                        print(f"{'':<12}{kind} cache failed: {why}")
        del runner, model


if __name__ == "__main__":
    main()
