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

and the weights (resident memory, or CUDA's allocated memory, after building minus before). It
prints, per case and per term, what :func:`vichat.train.memory.estimate_memory` predicts and what
was measured, and the relative error; the exit status is 1 when any error exceeds ``--tolerance``
(10 %), a case failed, or ``--max-seconds`` left cases out.

    OMP_NUM_THREADS=1 python bench/memory.py            # CPU, all cases (~2 min, < 4 GiB)
    python bench/memory.py --cuda --json memory.json      # one GPU: the CUDA case list, in one process
    python bench/memory.py --in-process --only bloom-V8000   # the in-process path on a CPU (a rehearsal)

**On CUDA every case runs in one process** (a fresh process per case would cost a CUDA start-up
each): the model is built directly on the GPU at its dtype, the peak is ``max_memory_allocated``
after ``reset_peak_memory_stats`` minus ``memory_allocated`` before the step, and the model is
deleted and the cache emptied between cases; a case that raises is reported and the rest go on.
The CUDA cases (:data:`CUDA_SHAPES`, 36 in all): BLOOM's 250,880-word vocabulary at sequence 512
with every loss (``plain``, ``chunked``, ``fused`` = cut-cross-entropy's Triton kernel, when
importable) and checkpointing on and off, in bf16 and fp16; GPT-J (biased head: the fused loss's
folded bias) and a small-vocabulary BLOOM in bf16; and BLOOM at the real width, 4 layers x 4096
(32 heads, vocabulary 250,880, micro-batch 4 x 512), in bf16 and in bf16 under autocast (what
``transformers.Trainer`` with ``bf16=True`` runs on one GPU: the 16-bit base, fp32 LoRA, and
LayerNorm / softmax outputs in fp32), so that the per-layer terms are checked at hidden 4096. Each
case is a build (< 1 s) and two forward + backward passes of at most 2,048 tokens (~0.1 s at the
4096 width); the first fused case also compiles the Triton kernels and cut-cross-entropy's
``torch.compile``-d sort (~10-30 s once). Expected on an H200: ~30-60 s plus start-up;
``--max-seconds`` (default 150) stops starting new cases after that and lists those skipped.
``--in-process`` runs the same loop on a CPU: resident-memory deltas within one process (glibc told
through ``mallopt`` to return freed blocks at once, a throw-away tiny case first); a rehearsal of
the CUDA path, whose step peaks for ``--only bloom-V8000`` came within 0.1 MiB of the per-process
run's (the per-process run stays the reference on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

GIB = 2**30

#: (name, family, layers, hidden, heads, vocab, seq, micro): small hidden, real vocabularies.
SHAPES = [
    ("bloom-V250880-s512", "bloom", 2, 64, 4, 250_880, 512, 1),
    ("bloom-V250880-s256-b2", "bloom", 2, 128, 4, 250_880, 256, 2),
    ("gptj-V50400-s512-b2", "gptj", 4, 256, 8, 50_400, 512, 2),
    ("bloom-V8000-s512-b4", "bloom", 4, 512, 8, 8_000, 512, 4),
    # a*s/h = 0.5 (the 7B shapes have 4 at s=512): a layer's backward then peaks in its MLP, not its attention
    ("bloom-h1024-a2-V8000-s256-b4", "bloom", 2, 1024, 2, 8_000, 256, 4),
]
#: The CUDA cases: (name, family, layers, hidden, heads, vocab, seq, micro, dtypes); a dtype
#: "bf16+autocast" is a bf16 model stepped under ``torch.autocast`` (Trainer's ``bf16=True``).
CUDA_SHAPES = [  # the real width first: if --max-seconds runs out, the small shapes are what is left out
    ("bloom-h4096-V250880-s512-b4", "bloom", 4, 4096, 32, 250_880, 512, 4, ["bf16", "bf16+autocast"]),
    ("bloom-V250880-s512", "bloom", 2, 64, 4, 250_880, 512, 1, ["bf16", "fp16"]),
    ("gptj-V50400-s512-b2", "gptj", 4, 256, 8, 50_400, 512, 2, ["bf16"]),
    ("bloom-V8000-s512-b4", "bloom", 4, 512, 8, 8_000, 512, 4, ["bf16"]),
]
TARGETS = {"bloom": ["query_key_value"], "gptj": ["q_proj", "v_proj"]}
LORA_R = 8


def _status() -> tuple[int, int]:
    from devices import hwm_and_rss

    return hwm_and_rss()


def _dtype(case: dict):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[case["dtype"]]


def _build(case: dict):
    """The LoRA model of ``case``. In a per-case process (CPU) built in fp32 and cast; in-process built
    directly on the device at its dtype (no fp32 copy: on a GPU that is both faster and what a
    16-bit load does)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BloomConfig, GPTJConfig

    torch.manual_seed(0)
    dtype = _dtype(case)
    if case["family"] == "bloom":
        config = BloomConfig(n_layer=case["layers"], hidden_size=case["hidden"], n_head=case["heads"],
                             vocab_size=case["vocab"])
    else:
        config = GPTJConfig(n_layer=case["layers"], n_embd=case["hidden"], n_head=case["heads"], rotary_dim=16,
                            n_positions=2048, vocab_size=case["vocab"])
    if case.get("in_process"):
        with torch.device(case["device"]):
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_config(config).to(dtype)
    model.config.use_cache = False
    if case["checkpointing"]:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=16, lora_dropout=0.05,
                                             target_modules=TARGETS[case["family"]]))
    return model


def _wrap_forward(model, case: dict) -> None:
    """Autocast around the model's forward only, as accelerate does for Trainer's ``bf16=True`` (the
    loss, computed from the captured hidden states, runs outside it). On a CPU, ``cuda_like`` cases
    run the forward with CUDA's autocast policy and dropout masks instead (bench/cuda_like.py)."""
    import functools

    import torch

    forward = model.forward
    if case["device"] == "cpu" and case.get("cuda_like"):
        from cuda_like import cuda_like

        dtype = _dtype(case) if case.get("autocast") else None

        def wrap(module) -> None:
            inner = module.forward

            @functools.wraps(inner)
            def wrapped(*args, **kwargs):
                with cuda_like(dtype):
                    return inner(*args, **kwargs)

            module.forward = wrapped

        wrap(model)
        # The blocks' parts too: gradient checkpointing re-runs a block's forward (captured when it was
        # enabled) during backward, outside the model's forward; real autocast records its state and
        # restores it for the recomputation. (The blocks' own code only adds tensors, which autocast
        # leaves alone.)
        for module in model.modules():
            if type(module).__name__ in ("BloomBlock", "GPTJBlock"):
                for child in module.children():
                    wrap(child)
    elif case.get("autocast"):
        model.forward = torch.autocast(case["device"], dtype=_dtype(case))(forward)


def _stepper(model, batch: dict, loss: str):
    """One forward + backward of ``model`` on ``batch`` with vichat's ``loss`` (the measured step)."""
    from vichat.train.loss import batch_loss_sum

    def step() -> None:
        value = batch_loss_sum(model, batch, loss)
        value.backward()
        del value

    return step


def _batch(case: dict, device: str):
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, case["vocab"], (case["micro"], case["seq"]), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": ids.to(device)}


def child(case: dict) -> dict:
    """Measure one case in this (fresh) process: the CPU path (``VmHWM``)."""
    import gc

    import peft  # noqa: F401 - imported before the first reading: code is not the model's memory
    import torch
    import transformers  # noqa: F401
    from transformers import BloomForCausalLM, GPTJForCausalLM  # noqa: F401


    torch.set_num_threads(1)
    gc.collect()
    _, rss0 = _status()
    model = _build(case)
    gc.collect()
    _, rss1 = _status()
    batch = _batch(case, case["device"])
    _wrap_forward(model, case)

    step = _stepper(model, batch, case["loss"])

    step()  # warm-up: one-time allocations (autograd engine, kernels) are not the model's
    model.zero_grad(set_to_none=True)
    gc.collect()
    _, before = _status()
    Path("/proc/self/clear_refs").write_text("5")
    step()
    hwm, _ = _status()
    return {"step_peak": hwm - before, "weights": rss1 - rss0}


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
    """The case list: :data:`SHAPES` on CPU (fp32, and bf16 for the 250,880 x 512 shape; plain and
    chunked), :data:`CUDA_SHAPES` on CUDA (``fused`` too when cut-cross-entropy is importable)."""
    from vichat.train.loss import fused_backend

    out = []
    if cuda:
        rows = [(n, f, la, h, he, v, s, m, dt) for n, f, la, h, he, v, s, m, dt in CUDA_SHAPES]
    else:
        rows = [(*shape, ["fp32", "bf16"] if shape[0].startswith("bloom-V250880-s512") else ["fp32"])
                for shape in SHAPES]
    losses = ["plain", "chunked"] + (["fused"] if cuda and fused_backend() else [])
    for name, family, layers, hidden, heads, vocab, seq, micro, dtypes in rows:
        for dtype in dtypes:
            for loss in losses:
                for ckpt in (True, False):
                    out.append(dict(name=name, family=family, layers=layers, hidden=hidden, heads=heads, vocab=vocab,
                                    seq=seq, micro=micro, dtype=dtype.split("+")[0], autocast="+autocast" in dtype,
                                    loss=loss, checkpointing=ckpt, device="cuda" if cuda else "cpu"))
    return out


def measure_in_process(case: dict, dev) -> dict:
    """One case in this process (CUDA: the default; CPU: ``--in-process``), with :class:`devices.Device`'s
    calls; the model and batch are freed afterwards."""
    case = {**case, "in_process": True}
    dev.empty_cache()
    start = dev.allocated()
    model = _build(case)
    dev.synchronize()
    weights = dev.allocated() - start
    batch = _batch(case, case["device"])
    _wrap_forward(model, case)

    step = _stepper(model, batch, case["loss"])

    try:
        step()  # warm-up: one-time allocations (autograd engine, kernels, compilation) are not the model's
        model.zero_grad(set_to_none=True)
        dev.empty_cache()
        before = dev.allocated()
        dev.reset_peak()
        step()
        peak = dev.peak() - before
    finally:
        del model, batch
        dev.empty_cache()
    return {"step_peak": peak, "weights": weights}


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
    ap.add_argument("--cuda", action="store_true", help="measure on the GPU (torch.cuda.max_memory_allocated), "
                    "all cases in this process")
    ap.add_argument("--in-process", action="store_true", help="CPU: run the cases in this process, as --cuda does "
                    "(a rehearsal of that code; the per-process run stays the reference on a CPU)")
    ap.add_argument("--tolerance", type=float, default=0.10)
    ap.add_argument("--only", default="", help="run the cases whose label (shape, dtype, loss, ckpt/no-ckpt: see "
                    "--list) contains this")
    ap.add_argument("--max-seconds", type=float, default=150.0, help="in-process: start no new case after this "
                    "many seconds (default 150; 0: no limit)")
    ap.add_argument("--list", action="store_true", help="print the case list (of --cuda with --cuda) and exit")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    todo = [c for c in cases(args.cuda) if args.only in _label(c)]
    if args.list:
        for c in todo:
            print(_label(c))
        return 0
    in_process = args.cuda or args.in_process
    dev = None
    if in_process:
        from devices import Device, pin_malloc_for_rss

        dev = Device("cuda" if args.cuda else "cpu")
        if not args.cuda:
            pin_malloc_for_rss()
            import torch

            torch.set_num_threads(1)
        print(f"device: {dev.name}; peak: {dev.peak_label}; all cases in this process", flush=True)
        for family in dict.fromkeys(c["family"] for c in todo):
            # a throw-away tiny case per family first: lazily imported code, the BLAS handles and the
            # allocator's first blocks would otherwise count as the first case's weights
            measure_in_process(dict(name="warm-up", family=family, layers=1, hidden=64, heads=4, vocab=1000, seq=16,
                                    micro=1, dtype=todo[0]["dtype"], autocast=False, loss="chunked",
                                    checkpointing=False, device=dev.kind), dev)
    rows, worst, failed, skipped = [], 0.0, [], []
    t0 = time.perf_counter()
    print(f"{'case':60s} {'term':12s} {'predicted':>10s} {'measured':>10s} {'error':>7s}")
    for case in todo:
        label = _label(case)
        if in_process and args.max_seconds and time.perf_counter() - t0 > args.max_seconds:
            skipped.append(label)
            continue
        t_case = time.perf_counter()
        try:
            got = measure_in_process(case, dev) if in_process else run_case(case)
        except Exception as exc:  # noqa: BLE001 - in-process: report the case, go on with the rest
            if not in_process:
                raise
            failed.append(f"{label}: {type(exc).__name__}: {str(exc)[:300]}")
            print(f"{label:60s} FAILED: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            continue
        want = predicted(case)
        got["total"], want["total"] = got["weights"] + got["step_peak"], want["weights"] + want["step_peak"]
        errors = {}
        for term in ("weights", "step_peak", "total"):
            err = (want[term] - got[term]) / got[term] if got[term] else float("inf")
            errors[term] = err
            if term != "weights":  # the weights of these small models carry a fixed few-MiB process overhead
                worst = max(worst, abs(err))
            print(f"{label:60s} {term:12s} {want[term] / 2**20:9.1f}M {got[term] / 2**20:9.1f}M {err:+7.1%}",
                  flush=True)
        print(f"{'':60s} {'(predicted)':12s} saved activations {want['activations'] / 2**20:.1f}M + "
              f"max(loss {want['logits'] / 2**20:.1f}M, backward {want['backward'] / 2**20:.1f}M); "
              f"{time.perf_counter() - t_case:.1f} s", flush=True)
        rows.append({"case": case, "measured": got, "predicted": want, "errors": errors,
                     "seconds": time.perf_counter() - t_case})
    wall = time.perf_counter() - t0
    print(f"largest error: {worst:.1%} (tolerance {args.tolerance:.0%}); {len(rows)} cases measured in {wall:.0f} s"
          + (" (in one process; on a CPU the per-process run is the reference)" if in_process and not args.cuda else ""))
    for text in failed:
        print(f"FAILED {text}")
    if skipped:
        print(f"not run (--max-seconds {args.max_seconds:g} reached): {', '.join(skipped)}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": dev.name if dev else "cpu", "in_process": in_process,
                                               "rows": rows, "largest_error": worst, "failed": failed,
                                               "skipped": skipped, "wall_seconds": wall}, indent=1))
    return 0 if worst <= args.tolerance and not failed and not skipped else 1


def _label(case: dict) -> str:
    dtype = case["dtype"] + ("+autocast" if case.get("autocast") else "")
    return f"{case['name']} {dtype} {case['loss']} {'ckpt' if case['checkpointing'] else 'no-ckpt'}"


if __name__ == "__main__":
    sys.exit(main())
