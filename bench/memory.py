"""Check the planner's memory model against measured peaks: forward + backward of a LoRA model.

For each shape (a real transformers BLOOM or GPT-J with random weights; small hidden sizes with
BLOOM's 250,880-word vocabulary keep a CPU run under a few GiB), loss (``plain`` full logits,
``chunked``; ``fused`` on CUDA when installed) and gradient checkpointing on/off, one fresh process
builds the model and a batch of ``micro x seq`` tokens (every position trained: the planner's
worst case), runs one warm-up step, then measures one forward + backward:

* CPU: peak resident memory (``VmHWM``, reset through ``/proc/self/clear_refs`` before the step)
  above the resident memory before it; glibc's mmap threshold is pinned so freed blocks go back to
  the system (else the peak would include allocator slack).
* CUDA (``--cuda``): ``torch.cuda.max_memory_allocated`` above the allocated memory before the step.

and the weights (resident memory after loading minus before). It prints, per case and per term,
what :func:`vichat.train.memory.estimate_memory` predicts and what was measured, and the relative
error; the exit status is 1 when any error exceeds ``--tolerance`` (10 %).

    OMP_NUM_THREADS=1 python bench/memory.py            # CPU, all cases (~2 min, < 4 GiB)
    python bench/memory.py --cuda                         # on a GPU: also fp16 / bf16 and --loss fused
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GIB = 2**30

#: (name, family, layers, hidden, heads, vocab, seq, micro): small hidden, real vocabularies.
SHAPES = [
    ("bloom-V250880-s512", "bloom", 2, 64, 4, 250_880, 512, 1),
    ("bloom-V250880-s256-b2", "bloom", 2, 128, 4, 250_880, 256, 2),
    ("gptj-V50400-s512-b2", "gptj", 4, 256, 8, 50_400, 512, 2),
    ("bloom-V8000-s512-b4", "bloom", 4, 512, 8, 8_000, 512, 4),
]
TARGETS = {"bloom": ["query_key_value"], "gptj": ["q_proj", "v_proj"]}
LORA_R = 8


def _status() -> tuple[int, int]:
    text = Path("/proc/self/status").read_text()
    hwm = int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) * 1024
    rss = int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) * 1024
    return hwm, rss


def _build(case: dict):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import BloomConfig, BloomForCausalLM, GPTJConfig, GPTJForCausalLM

    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[case["dtype"]]
    if case["family"] == "bloom":
        model = BloomForCausalLM(BloomConfig(n_layer=case["layers"], hidden_size=case["hidden"], n_head=case["heads"],
                                             vocab_size=case["vocab"]))
    else:
        model = GPTJForCausalLM(GPTJConfig(n_layer=case["layers"], n_embd=case["hidden"], n_head=case["heads"],
                                           rotary_dim=16, n_positions=2048, vocab_size=case["vocab"]))
    model = model.to(dtype)
    model.config.use_cache = False
    if case["checkpointing"]:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=16, lora_dropout=0.05,
                                             target_modules=TARGETS[case["family"]]))
    return model


def _batch(case: dict, device: str):
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, case["vocab"], (case["micro"], case["seq"]), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": ids.to(device)}


def child(case: dict) -> dict:
    """Measure one case in this (fresh) process."""
    import gc

    import peft  # noqa: F401 - imported before the first reading: code is not the model's memory
    import torch
    import transformers  # noqa: F401
    from transformers import BloomForCausalLM, GPTJForCausalLM  # noqa: F401

    from vichat.train.loss import batch_loss_sum

    torch.set_num_threads(1)
    gc.collect()
    cuda = case["device"] == "cuda"
    _, rss0 = _status()
    model = _build(case)
    if cuda:
        model = model.cuda()
    gc.collect()
    _, rss1 = _status()
    batch = _batch(case, case["device"])

    def step() -> None:
        loss = batch_loss_sum(model, batch, case["loss"])
        loss.backward()
        del loss

    step()  # warm-up: one-time allocations (autograd engine, kernels) are not the model's
    model.zero_grad(set_to_none=True)
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        _, before = _status()
        Path("/proc/self/clear_refs").write_text("5")
    step()
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        weights = before  # the model (the batch is a few KB)
    else:
        hwm, _ = _status()
        peak = hwm - before
        weights = rss1 - rss0
    return {"step_peak": peak, "weights": weights}


def predicted(case: dict) -> dict:
    """The planner's terms for the case (forward + backward: no optimizer state)."""
    from vichat.specs import Architecture
    from vichat.train.memory import base_weight_bytes, estimate_memory
    from vichat.train.shapes import lora_input_features, lora_module_count, lora_param_count

    arch = Architecture(family=case["family"], n_layers=case["layers"], hidden_size=case["hidden"],
                        n_heads=case["heads"], vocab_size=case["vocab"], max_positions=2048)
    targets = TARGETS[case["family"]]
    n_lora = lora_param_count(arch, targets, LORA_R)
    m = estimate_memory(arch, micro=case["micro"], seq=case["seq"], load_in="none", compute_dtype=case["dtype"],
                        checkpointing=case["checkpointing"], n_lora=n_lora,
                        lora_in_features=lora_input_features(arch, targets),
                        lora_modules=lora_module_count(arch, targets), lora_r=LORA_R, zero_stage=0, world=1,
                        deepspeed=False, device=case["device"], loss=case["loss"])
    weights = base_weight_bytes(arch, "none", case["dtype"], deepspeed=False) + m.lora_weights
    return {"weights": weights, "activations": m.activations, "logits": m.logits, "backward": m.backward,
            "step_peak": m.step_peak + m.lora_gradients}


def cases(cuda: bool) -> list[dict]:
    out = []
    for name, family, layers, hidden, heads, vocab, seq, micro in SHAPES:
        dtypes = ["fp32", "bf16"] if name.startswith("bloom-V250880-s512") else ["fp32"]
        if cuda:
            dtypes = ["fp16", "bf16"]
        losses = ["plain", "chunked"] + (["fused"] if cuda else [])
        for dtype in dtypes:
            for loss in losses:
                for ckpt in (True, False):
                    out.append(dict(name=name, family=family, layers=layers, hidden=hidden, heads=heads, vocab=vocab,
                                    seq=seq, micro=micro, dtype=dtype, loss=loss, checkpointing=ckpt,
                                    device="cuda" if cuda else "cpu"))
    return out


def run_case(case: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0",
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(case)], capture_output=True, text=True,
                          env=env, timeout=1200)
    if proc.returncode != 0:
        raise SystemExit(f"case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--cuda", action="store_true", help="measure on the GPU (torch.cuda.max_memory_allocated)")
    ap.add_argument("--tolerance", type=float, default=0.10)
    ap.add_argument("--only", default="", help="run the shapes whose name contains this")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    rows, worst = [], 0.0
    print(f"{'case':52s} {'term':12s} {'predicted':>10s} {'measured':>10s} {'error':>7s}")
    for case in cases(args.cuda):
        if args.only not in case["name"]:
            continue
        got, want = run_case(case), predicted(case)
        label = (f"{case['name']} {case['dtype']} {case['loss']} "
                 f"{'ckpt' if case['checkpointing'] else 'no-ckpt'}")
        got["total"], want["total"] = got["weights"] + got["step_peak"], want["weights"] + want["step_peak"]
        for term in ("weights", "step_peak", "total"):
            err = (want[term] - got[term]) / got[term]
            if term != "weights":  # the weights of these small models carry a fixed few-MiB process overhead
                worst = max(worst, abs(err))
            print(f"{label:52s} {term:12s} {want[term] / 2**20:9.1f}M {got[term] / 2**20:9.1f}M {err:+7.1%}",
                  flush=True)
        print(f"{'':52s} {'(predicted)':12s} saved activations {want['activations'] / 2**20:.1f}M + "
              f"max(loss {want['logits'] / 2**20:.1f}M, backward {want['backward'] / 2**20:.1f}M)", flush=True)
        rows.append({"case": case, "measured": got, "predicted": want})
    print(f"largest error: {worst:.1%} (tolerance {args.tolerance:.0%})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
