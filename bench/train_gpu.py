"""``bench/train.py --gpu``: vichat against the Trainer + peft peer on one GPU, at bloomz-7b1's shape.

    python bench/train.py --gpu --json train.json     # one CUDA GPU (H100/H200 class), ~2-3 min
    python bench/train.py --gpu --smoke               # the same code on a CPU, tiny shape (~15 s)

**Model and runs.** BLOOM with bloomz-7b1's shape (30 layers, hidden 4096, 32 heads, vocabulary
250,880: 7.07B parameters), random weights built once, directly on the GPU in bf16 (no fp32
copy, no CPU pass). LoRA r=8, alpha 16, dropout 0.05 on ``query_key_value`` (3.9M trainable),
AdamW, lr 3e-4, warm-up 2, total batch 16 = micro-batch 8 x accumulation 2, one epoch over
``--gpu-records`` Vietnamese Alpaca records (the real length mix: mean ~132 tokens with the
benchmark's 4,000-word BPE tokenizer, at most ``--max-length`` 512). Both runs use that same base:

* the peer: ``transformers.Trainer`` + peft, ``DataCollatorForSeq2Seq`` (dynamic padding),
  ``train_sampling_strategy="group_by_length"``, the model's own loss, ``bf16=True``;
* vichat: :class:`vichat.train.trainer.TrainingRun` itself (its batch plan and ``--loss``: auto =
  cut-cross-entropy's kernel when installed, else chunked), fed the in-memory base through a
  throw-away plugin whose loader returns it. The peer's LoRA is removed (``unload``) first.

**Gradient checkpointing** (``--checkpointing``, the same for both): ``auto`` = off when
:func:`vichat.train.plan.plan` says that both runs fit the GPU's memory without it (vichat with its
loss, the peer with the plain loss's full logits), else on. On a 139 GiB H200 the plan for micro 8
x 512 without checkpointing is 43 GiB (vichat) / 55 GiB (the peer), so it is off.

**The fused loss** (vichat's ``auto`` on CUDA when cut-cross-entropy is installed) is checked once
the base exists, before either run: its Triton kernel against the chunked loss at the real head
(250,880 x 4096) with 64 and 72 trained tokens, which also compiles both of Triton's
specialisations of the token count (a multiple of 16 or not) and the package's ``torch.compile``-d
vocabulary sort out of the timed steps. If the check fails (no C compiler for Triton's launcher,
an incompatible Triton...) or disagrees, or the kernel fails in a real step, vichat runs with the
chunked loss and the report says why: the benchmark does not die midway.

**Timing rule (both sides alike).** One callback, added to both Trainers, synchronises the device
and reads the clock at each optimizer step's start and end (batch loading, logging, evaluation
and saving fall outside), and the useful (non-padding: ``attention_mask``) tokens of the step's
micro-batches are counted as ``training_step`` receives them. The **first optimizer step is left
out** of tokens/s on both sides (time and tokens): it carries CUDA/cuBLAS start-up and the
allocator's first growth. Its time is printed. ``--time-limit`` (default 90 s of timed steps
per side) stops a run early if the GPU is much slower than expected; tokens/s stays valid.

**FLOPs and MFU.** ``N`` = all parameters (7.07B; the tied embedding / LM head once). Per useful
token, a LoRA step needs the forward (2N) and the gradient with respect to each layer's input
(2N); frozen weights get no weight gradient, and LoRA's own FLOPs (r=8) are < 0.2 % and left out.
So **MFU = tokens/s x 4N / peak**, with peak the device's dense bf16 figure (H100/H200 SXM:
989e12; ``--peak-tflops`` overrides, unknown GPUs print n/a). PaLM's definition: recomputation is
not counted. **HFU** adds what checkpointing recomputes, the blocks' forward (2 x N_blocks; the
LM head is not recomputed): 4N + 2 N_blocks ~ 5.7N (6N is the usual round figure). Attention
(BLOOM's eager attention computes the full s x s scores): 4 L h s^2 FLOPs forward per sequence
of s useful tokens, twice that backward (+ one forward again with checkpointing), i.e. 12 L h
E[s^2]/E[s] per token (~2.5e8 at this length mix, 0.9 % of 4N); printed as "+attn". vichat's
chunked and fused losses send only the positions with a trained label (the response, ~57 % of the
tokens here) through the LM head (V h = 1.03B of the 7.07B), so it executes ~0.94 x 4N per token;
the "exec" column divides what each side computes (4N for the peer) by the peak, and MFU counts 4N
for both (the same work done).

**Memory.** Per side, ``torch.cuda.max_memory_allocated`` from just before ``train()`` (weights
included), and the caching allocator's reserved peak. The planner's prediction for vichat's run
(:func:`vichat.train.plan.plan`: worst case, every sequence at ``--max-length``, which the run
reaches: a micro-batch with a 512-token record is padded to 512) is printed without its margin
(CUDA context + 10 % fragmentation, which ``max_memory_allocated`` does not see) next to the
measured peak, with the relative error (the goal: within 10 %), and with its margin next to the
reserved peak.

**Time on an H200** (4,096 records would be 542k tokens; the default 6,144 are ~813k per side):
at 790 TFLOP/s of 4N FLOPs (28k tokens/s) the two runs take ~30 s each; at the goal's 45 % MFU
(15.6k tokens/s) ~52 s each, 1.7 min together; with start-up (imports ~15 s, BPE training ~3 s,
the base a few s, tokenising twice ~6 s, the fused-loss check with its compilation ~10-30 s, two
evaluations of 50 records, the adapter save) ~2.5-3 min in all. At worst ``--time-limit`` caps each
run's timed steps at 90 s (~4 min in all). ``--max-steps N`` trains
both on the first N x total-batch records only.

**Smoke mode** (``--smoke``): the same function on a CPU with BLOOM 2 layers x 64 hidden, 4 heads,
the BPE vocabulary, fp32, 32 records, micro 4 x accumulation 2; CUDA calls go through
:class:`devices.Device` (peak = ``VmHWM`` above the resident memory before the base was built: not
comparable to a plan, printed for the shape of the report only), MFU prints n/a. The report and
the ``--json`` document have the same shape on both.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from devices import Device

GIB = 2**30
GPU_SHAPE = {"layers": 30, "hidden": 4096, "heads": 32, "vocab": 250_880}
SMOKE_SHAPE = {"layers": 2, "hidden": 64, "heads": 4, "vocab": None}  # None: the BPE tokenizer's size
TIMING_RULE = ("each side: useful tokens / seconds over its optimizer steps after the first (device synchronised "
               "at each step's start and end)")


# --------------------------------------------------------------------------- timing


def make_timer(dev: Device, limit_s: float | None, label: str = "", every: int = 0) -> Any:
    """A Trainer callback: per optimizer step, synchronised seconds and useful tokens (see the docstring);
    with ``every``, a progress line every that many steps."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[tuple[float, int]] = []  # (seconds, useful tokens) per optimizer step
            self._pending: list[Any] = []
            self._t = 0.0
            self.stopped_early = False

        def add_tokens(self, count: Any) -> None:
            self._pending.append(count)  # a device tensor: read after the step's synchronisation

        def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001 - Trainer's signature
            dev.synchronize()
            self._pending = []
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
            dev.synchronize()
            seconds = time.perf_counter() - self._t
            self.steps.append((seconds, int(sum(int(c) for c in self._pending))))
            if every and len(self.steps) % every == 0:
                r = throughput(self.steps)
                print(f"{label}: step {state.global_step}/{state.max_steps}, {r['tokens_per_second']:,.0f} tokens/s",
                      flush=True)
            if limit_s and sum(s for s, _ in self.steps) >= limit_s and state.global_step < state.max_steps:
                control.should_training_stop = True
                self.stopped_early = True
            return control

    return StepTimer()


def count_tokens(trainer: Any, timer: Any) -> None:
    """Make ``trainer`` report each micro-batch's useful tokens to ``timer`` (same rule for both sides)."""
    original = trainer.training_step

    def training_step(model: Any, inputs: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        mask = inputs.get("attention_mask")
        timer.add_tokens(mask.sum() if mask is not None else inputs["input_ids"].numel())
        return original(model, inputs, *args, **kwargs)

    trainer.training_step = training_step  # an instance attribute: Trainer calls self.training_step


def throughput(steps: list[tuple[float, int]]) -> dict[str, Any]:
    """Tokens/s over the steps after the first (all steps if there is only one)."""
    timed = steps[1:] if len(steps) > 1 else steps
    seconds = sum(s for s, _ in timed)
    tokens = sum(t for _, t in timed)
    return {"tokens_per_second": tokens / seconds if seconds else 0.0, "timed_steps": len(timed),
            "timed_seconds": seconds, "timed_tokens": tokens, "first_step_seconds": steps[0][0] if steps else None,
            "all_tokens": sum(t for _, t in steps)}


# --------------------------------------------------------------------------- model, checks, plan


def build_base(config: Any, dev: Device, dtype: str) -> Any:
    """Random-weight BLOOM made directly on ``dev`` in ``dtype`` (no fp32 copy, no CPU pass)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device(dev.kind):
        base = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, {"bf16": "bfloat16", "fp16": "float16",
                                                                              "fp32": "float32"}[dtype]))
    base.config.use_cache = False
    return base


def check_weights(base: Any) -> None:
    """Random weights must be usable: finite and not all zero (a run on them must give finite losses)."""
    import torch

    with torch.no_grad():
        for name, p in base.named_parameters():
            if not torch.isfinite(p).all():
                raise SystemExit(f"random base: {name} has non-finite values")
        if float(base.get_input_embeddings().weight.float().abs().sum()) == 0.0:
            raise SystemExit("random base: the embedding is all zero")


def fused_vs_chunked(weight: Any, dtype: str, tokens: int) -> dict[str, Any]:
    """One forward + backward of vichat's fused loss (cut-cross-entropy: its Triton kernel on CUDA)
    with the head ``weight`` (frozen) and ``tokens`` trained positions after a 7-token prompt,
    against the chunked loss: relative differences of the loss and of the hidden states' gradient,
    and ``ok`` (finite, loss within 1e-2, gradient within 0.1: the kernel's 16-bit products and its
    gradient filter, which skips 128 x 128 blocks whose ``softmax - one_hot`` entries are all below
    2**-5 of the 16-bit epsilon, make small differences)."""
    import torch

    from vichat.train.loss import chunked_loss_sum, fused_loss_sum

    g = torch.Generator(device=weight.device).manual_seed(tokens)
    width = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
    hidden = torch.randn(1, tokens + 8, weight.size(1), device=weight.device, dtype=width, generator=g)
    hidden.requires_grad_()
    labels = torch.randint(0, weight.size(0), (1, tokens + 8), device=weight.device, generator=g)
    labels[:, :7] = -100  # a prompt: no loss there; positions 6 .. tokens + 6 predict the trained labels
    fused = fused_loss_sum(hidden, weight, None, labels)
    fused.backward()
    grad_fused, hidden.grad = hidden.grad.float(), None
    ref = chunked_loss_sum(hidden, weight, None, labels)
    ref.backward()
    value, expected = fused.detach().item(), ref.detach().item()
    rel = abs(value - expected) / abs(expected)
    grad_rel = float((grad_fused - hidden.grad.float()).norm() / hidden.grad.float().norm())
    ok = math.isfinite(value) and math.isfinite(grad_rel) and rel < 1e-2 and grad_rel < 0.1
    return {"tokens": tokens, "loss_rel_diff": rel, "grad_rel_diff": grad_rel, "ok": ok}


def check_fused_loss(loss: str, dev: Device, dtype: str, base: Any) -> tuple[str, list[dict[str, Any]] | None]:
    """Before the timed runs: does the loss vichat will use work here? For the fused loss on CUDA,
    :func:`fused_vs_chunked` at the real head (V x h) with 64 and with 72 trained tokens. This also
    compiles the kernels out of the timed steps: Triton specialises an integer argument on whether it
    is a multiple of 16, and the kernels take the number of trained tokens, so a run meets two
    variants of each, the second possibly after its first step (and ``torch.compile`` compiles
    cut-cross-entropy's vocabulary sort). If it raises (no C compiler for Triton's launcher, an
    incompatible Triton...) or disagrees, vichat runs with ``chunked`` and the report says why,
    rather than the benchmark dying midway."""
    from vichat.train.loss import resolve_loss

    resolved = resolve_loss(loss, device=dev.kind, zero_stage=0)
    if resolved != "fused" or not dev.cuda:
        return resolved, None
    weight = base.get_output_embeddings().weight.detach()  # frozen, as under LoRA
    t0 = time.perf_counter()
    try:
        checks = [fused_vs_chunked(weight, dtype, tokens) for tokens in (64, 72)]
    except Exception as exc:  # noqa: BLE001 - any failure of the kernel means: do not use it here
        print(f"fused loss check failed ({type(exc).__name__}: {exc}); vichat runs with --loss chunked", flush=True)
        return "chunked", [{"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}]
    finally:
        dev.empty_cache()
    worst = max(checks, key=lambda c: c["grad_rel_diff"])
    summary = (f"loss {max(c['loss_rel_diff'] for c in checks):.1e}, gradient {worst['grad_rel_diff']:.1e} "
               f"relative to the chunked loss; {time.perf_counter() - t0:.1f} s with compilation")
    if not all(c["ok"] for c in checks):
        print(f"fused loss check: differs from the chunked loss ({summary}); vichat runs with --loss chunked",
              flush=True)
        return "chunked", checks
    print(f"fused loss check at the real head: {summary}", flush=True)
    return "fused", checks


def choose_checkpointing(setting: str, cfg: Any, spec: Any, n_train: int, memory_gib: float) -> tuple[bool, str]:
    """``on``/``off`` as given; ``auto``: off when the plan fits ``memory_gib`` without checkpointing for
    vichat (its loss) and for the peer (the plain loss), else on."""
    from vichat.train.plan import plan

    if setting != "auto":
        return setting == "on", f"--checkpointing {setting}"
    totals = {}
    for who, loss in (("vichat", cfg.loss), ("peer", "plain")):
        p = plan(replace(cfg, gradient_checkpointing=False, loss=loss), spec, n_train_records=n_train,
                 gpu_mem_gb=memory_gib)
        totals[who] = p.memory.total / GIB
    fits = all(t <= memory_gib for t in totals.values())
    why = (f"auto: the plan without checkpointing needs {totals['vichat']:.1f} GiB (vichat) / "
           f"{totals['peer']:.1f} GiB (peer, plain loss) of {memory_gib:.0f} GiB")
    return (not fits), why + (": off" if fits else ": on")


def flops_per_token(n_params: int, n_blocks: int, checkpointing: bool, lengths: list[int], layers: int,
                    hidden: int, head_params: int = 0, trained_fraction: float = 1.0) -> dict[str, float]:
    """FLOPs per useful token (see the module docstring): model (4N), hardware (+2 N_blocks with
    checkpointing), attention (12 or 16 x L h E[s^2]/E[s]), and ``head_on_trained``: 4N less the LM
    head's 4 V h on the positions without a trained label (what vichat's chunked and fused losses,
    which send only trained positions through the head, execute)."""
    mean_sq_over_mean = sum(s * s for s in lengths) / max(1, sum(lengths))
    attention = (16 if checkpointing else 12) * layers * hidden * mean_sq_over_mean
    return {"model": 4.0 * n_params, "hardware": 4.0 * n_params + (2.0 * n_blocks if checkpointing else 0.0),
            "attention": attention, "head_on_trained": 4.0 * (n_params - head_params * (1.0 - trained_fraction))}


def bloom_block_params(hidden: int) -> int:
    h = hidden
    return 2 * h + (h * 3 * h + 3 * h) + (h * h + h) + 2 * h + (h * 4 * h + 4 * h) + (4 * h * h + h)


# --------------------------------------------------------------------------- the two runs


def _row(timer: Any, peak: int, held: int, reserved: int | None, losses: list[float], val: float,
         steps: int) -> dict[str, Any]:
    r = throughput(timer.steps)
    finite = bool(losses) and all(math.isfinite(x) for x in losses) and math.isfinite(val)
    return {**r, "steps": steps, "stopped_early": timer.stopped_early, "peak_bytes": peak, "held_before_bytes": held,
            "reserved_peak_bytes": reserved, "losses": losses, "mean_loss": sum(losses) / len(losses) if losses else None,
            "final_loss": losses[-1] if losses else None, "val_loss": val, "finite": finite}


def run_peer(base: Any, tok: Any, feats: list[dict], val: list[dict], a: dict, dev: Device, dtype: str,
             checkpointing: bool, out: Path, baseline: int) -> tuple[Any, dict[str, Any]]:
    """Trainer + peft on ``base``; returns the base (LoRA removed) and the row."""
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from train import eval_loss

    if checkpointing:
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["query_key_value"],
                                            task_type="CAUSAL_LM"))
    targs = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=a["micro"], gradient_accumulation_steps=a["accumulation"],
        num_train_epochs=1, learning_rate=a["lr"], warmup_steps=a["warmup"], lr_scheduler_type="linear",
        bf16=dtype == "bf16", fp16=dtype == "fp16", logging_steps=a["logging_steps"], save_strategy="no", eval_strategy="no",
        report_to="none", train_sampling_strategy="group_by_length", seed=a["seed"], remove_unused_columns=False,
        disable_tqdm=True, dataloader_num_workers=0, use_cpu=not dev.cuda)
    timer = make_timer(dev, a["time_limit"], "peer", a["progress_every"])
    trainer = Trainer(model=model, args=targs, train_dataset=feats, processing_class=tok, callbacks=[timer],
                      data_collator=DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100))
    trainer.remove_callback(PrinterCallback)  # its dict per logging step: vichat's log lines are enough
    count_tokens(trainer, timer)
    held = dev.allocated() - baseline
    dev.reset_peak()
    trainer.train()
    peak = dev.peak() - baseline
    reserved = dev.reserved_peak()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    val_loss = eval_loss(model, tok, val, a["micro"], dev.kind, autocast(dev, dtype))
    row = _row(timer, peak, held, reserved, losses, val_loss, trainer.state.global_step)
    base = model.unload()  # the same base for vichat: built once
    del model, trainer, timer
    dev.empty_cache()
    return base, row


def run_vichat(cfg: Any, registry: Any, tok: Any, val: list[dict], a: dict, dev: Device, dtype: str,
               baseline: int) -> dict[str, Any]:
    """vichat's own run (TrainingRun) on the registered in-memory base."""
    from train import eval_loss
    from vichat.train.trainer import TrainingRun

    run = None
    try:
        run = TrainingRun(cfg, registry=registry, show_progress=False)
        run.trainer = run.build_trainer()  # as the peer's: the Trainer exists before the measurement starts
        timer = make_timer(dev, a["time_limit"], "vichat", a["progress_every"])
        run.trainer.add_callback(timer)
        count_tokens(run.trainer, timer)
        held = dev.allocated() - baseline
        dev.reset_peak()
        result = run.train()
        peak = dev.peak() - baseline
    except Exception:
        if run is not None:
            with contextlib.suppress(Exception):
                run.model.unload()  # LoRA out of the shared base again, so that a rerun starts from the plain base
            run.trainer = run.model = None
        raise
    reserved = dev.reserved_peak()
    losses = [e["loss"] for e in result.log if "loss" in e]
    val_loss = eval_loss(run.model, tok, val, a["micro"], dev.kind, autocast(dev, dtype))
    row = _row(timer, peak, held, reserved, losses, val_loss, result.global_step)
    row["loss"] = result.loss
    row["vichat_tokens_per_second"] = result.tokens_per_second  # vichat's own log: all steps, unsynchronised
    return row


def autocast(dev: Device, dtype: str) -> Any:
    import torch

    if dev.cuda and dtype in ("bf16", "fp16"):
        half = torch.bfloat16 if dtype == "bf16" else torch.float16
        return lambda: torch.autocast("cuda", dtype=half)
    return contextlib.nullcontext


# --------------------------------------------------------------------------- main


def gpu_main(args: Any, json_path: str | None = None) -> dict[str, Any]:
    """The GPU benchmark (``args.smoke``: its CPU rehearsal); prints the report and returns the JSON
    document (written to ``json_path`` too, and the peer's row alone as soon as it is measured)."""
    import torch

    from train import bench_config, bloom_config, load_records, train_tokenizer, write_prepared
    from vichat.hookspecs import hookimpl
    from vichat.plugins import build_registry
    from vichat.records import VichatError
    from vichat.specs import Architecture, BaseModelSpec
    from vichat.train.data import label_tokens, tokenize_all
    from vichat.train.loss import resolve_loss
    from vichat.train.plan import plan

    t_start = time.perf_counter()
    smoke = bool(args.smoke)
    dev = Device("cpu" if smoke else "cuda")
    shape = SMOKE_SHAPE if smoke else GPU_SHAPE
    dtype = "fp32" if smoke else "bf16"
    if smoke:
        torch.set_num_threads(args.threads or 1)
    n_train = args.gpu_records
    if args.max_steps:
        n_train = min(n_train, args.max_steps * args.total_batch)
    accumulation = args.total_batch // args.micro
    records = load_records(args.data, n_train + args.val_records, args.seed)
    train, val = records[:n_train], records[n_train:]
    tok = train_tokenizer(records, args.vocab)
    vocab = shape["vocab"] or len(tok)
    config = bloom_config(tok, shape["layers"], shape["hidden"], shape["heads"], vocab=vocab)
    work = Path(tempfile.mkdtemp(prefix="vichat-bench-train-gpu-"))
    os.environ.setdefault("VICHAT_CACHE_DIR", str(work / "cache"))  # vichat's tokenised-data cache: not ~/.cache
    data = write_prepared(work / "data", train, val)
    tr = tokenize_all(train, tok, "chat", args.max_length)
    va = tokenize_all(val, tok, "chat", args.max_length)
    lengths = [len(e["input_ids"]) for e in tr]
    feats = [{k: e[k] for k in ("input_ids", "attention_mask", "labels")} for e in tr]

    arch = Architecture(family="bloom", n_layers=shape["layers"], hidden_size=shape["hidden"], n_heads=shape["heads"],
                        vocab_size=vocab, max_positions=2048)
    holder: dict[str, Any] = {}
    spec = BaseModelSpec(name="bench-bloom", description="bloomz-7b1-shaped random weights (benchmark).",
                         hub_id="bench/bloom-random", lora_targets=("query_key_value",), architecture=arch,
                         load=lambda spec, path=None, **options: (holder["base"], tok))

    class BenchPlugin:
        @hookimpl
        def register_base_models(self, register):  # noqa: ANN001 - the hook's signature
            register(spec)

    registry = build_registry(extra=[("bench", BenchPlugin())])
    try:
        loss = resolve_loss(args.loss, device=dev.kind, zero_stage=0)  # checked on the GPU once the base exists
    except VichatError as exc:
        raise SystemExit(f"--loss {args.loss}: {exc}") from None
    memory_gib = dev.total_memory() / GIB
    # the same for both sides (logging falls outside the timed steps); every step for a short run
    logging_steps = 1 if math.ceil(len(train) / args.total_batch) < 50 else 10
    cfg = bench_config(args, base_model=spec.name, data=str(data), output_dir=str(work / "vichat"), device=dev.kind,
                       load_in="none", compute_dtype=dtype, loss=loss, gpu_mem_gb=memory_gib,
                       logging_steps=logging_steps)
    checkpointing, why = choose_checkpointing(args.checkpointing, cfg, spec, len(train), memory_gib)
    cfg = replace(cfg, gradient_checkpointing=checkpointing)
    print(f"{dev.name}: {memory_gib:.0f} GiB; gradient checkpointing {'on' if checkpointing else 'off'} ({why}); "
          f"vichat loss {loss}", flush=True)

    dev.empty_cache()
    baseline = 0 if dev.cuda else dev.allocated()  # CPU: resident memory before the base exists
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    base = build_base(config, dev, dtype)
    check_weights(base)
    dev.synchronize()
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in base.parameters())
    n_blocks = shape["layers"] * bloom_block_params(shape["hidden"])
    print(f"base built in {build_s:.1f} s: {n_params:,} parameters, {dtype}", flush=True)
    loss, loss_check = check_fused_loss(loss, dev, dtype, base)
    cfg = replace(cfg, loss=loss)

    a = {"micro": args.micro, "accumulation": accumulation, "lr": args.lr, "warmup": args.warmup, "seed": args.seed,
         "time_limit": args.time_limit, "logging_steps": logging_steps, "progress_every": 0 if smoke else 50}
    t0 = time.perf_counter()
    base, peer = run_peer(base, tok, feats, va, a, dev, dtype, checkpointing, work / "peer", baseline)
    peer["wall_seconds"] = time.perf_counter() - t0
    print(f"peer done: {peer['tokens_per_second']:,.0f} tokens/s", flush=True)
    write_json({"partial": True, "device": dev.name, "rows": {"peer": peer}}, json_path)  # survives a crash below
    holder["base"] = base
    t0 = time.perf_counter()
    vichat_failure = None
    try:
        ours = run_vichat(cfg, registry, tok, va, a, dev, dtype, baseline)
    except Exception as exc:  # noqa: BLE001 - the fused kernel failing in a real step: rerun with chunked
        if cfg.loss != "fused":
            raise
        vichat_failure = f"--loss {cfg.loss}: {type(exc).__name__}: {exc}"[:2000]
        ours = None
    if ours is None:  # outside the handler: the failed step's tensors (held by its traceback) are freed by now
        print(f"vichat's run failed ({vichat_failure}); running it again with --loss chunked", flush=True)
        dev.empty_cache()
        cfg = replace(cfg, loss="chunked", output_dir=str(work / "vichat-chunked"))
        t0 = time.perf_counter()
        ours = run_vichat(cfg, registry, tok, va, a, dev, dtype, baseline)
    ours["wall_seconds"] = time.perf_counter() - t0
    print(f"vichat done: {ours['tokens_per_second']:,.0f} tokens/s", flush=True)

    p = plan(cfg, spec, n_train_records=len(train), gpu_mem_gb=memory_gib)
    m = p.memory
    predicted_no_margin = m.total - m.margin
    measured = ours["peak_bytes"]
    planner = {"predicted_bytes": m.total, "predicted_no_margin_bytes": predicted_no_margin, "margin_bytes": m.margin,
               "measured_bytes": measured, "error": (predicted_no_margin - measured) / measured if measured else None,
               "reserved_peak_bytes": ours["reserved_peak_bytes"], "terms_gib": m.gib(), "loss": p.loss,
               "worst_case": f"micro {p.batch.micro} x {args.max_length} tokens, every position trained",
               "longest_record": max(lengths), "records_at_max_length": sum(1 for x in lengths if x >= args.max_length)}
    peak_flops = dev.peak_flops(args.peak_tflops)
    trained_fraction = sum(label_tokens(e) for e in tr) / max(1, sum(lengths))
    fl = flops_per_token(n_params, n_blocks, checkpointing, lengths, shape["layers"], shape["hidden"],
                         head_params=vocab * shape["hidden"], trained_fraction=trained_fraction)
    fl["trained_fraction"] = trained_fraction
    for row in (ours, peer):
        tps = row["tokens_per_second"]
        row["mfu"] = tps * fl["model"] / peak_flops if peak_flops else None
        executed = fl["head_on_trained"] if row is ours and ours["loss"] != "plain" else fl["model"]
        row["mfu_executed"] = tps * executed / peak_flops if peak_flops else None
        row["hfu"] = tps * fl["hardware"] / peak_flops if peak_flops else None
        row["mfu_with_attention"] = tps * (fl["model"] + fl["attention"]) / peak_flops if peak_flops else None
    doc = {
        "device": dev.name, "smoke": smoke, "dtype": dtype, "peak_flops": peak_flops,
        "model": {"family": "bloom", **{k: shape[k] for k in ("layers", "hidden", "heads")}, "vocab": vocab,
                  "params": n_params, "block_params": n_blocks, "build_seconds": build_s},
        "data": {"train_records": len(train), "val_records": len(val), "tokens": sum(lengths),
                 "mean_tokens": sum(lengths) / len(lengths), "max_length": args.max_length},
        "batch": {"total": args.total_batch, "micro": args.micro, "accumulation": accumulation},
        "checkpointing": {"setting": args.checkpointing, "on": checkpointing, "reason": why},
        "loss": {"requested": args.loss, "vichat": ours["loss"], "check": loss_check, "failure": vichat_failure},
        "flops_per_token": fl, "timing_rule": TIMING_RULE, "rows": {"vichat": ours, "peer": peer},
        "ratio": ours["tokens_per_second"] / peer["tokens_per_second"] if peer["tokens_per_second"] else None,
        "planner": planner, "wall_seconds": time.perf_counter() - t_start,
    }
    print_report(doc, dev)
    write_json(doc, json_path)
    shutil.rmtree(work, ignore_errors=True)  # data, adapters, checkpoints: nothing the report needs
    return doc


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def print_report(doc: dict[str, Any], dev: Device) -> None:
    """The human-readable report of :func:`gpu_main`'s document."""
    md, d, b, pl = doc["model"], doc["data"], doc["batch"], doc["planner"]
    fl = doc["flops_per_token"]
    print(f"\n{doc['device']}{' (smoke run: CPU, tiny shape; figures not meaningful)' if doc['smoke'] else ''}")
    print(f"model: BLOOM {md['layers']} x {md['hidden']}, {md['heads']} heads, vocab {md['vocab']:,} "
          f"({md['params']:,} parameters), random weights, {doc['dtype']}, LoRA r=8 on query_key_value")
    print(f"data: {d['train_records']} records, {d['tokens']:,} tokens (mean {d['mean_tokens']:.0f}, max length "
          f"{d['max_length']}); batch {b['total']} = micro {b['micro']} x accumulation {b['accumulation']}; "
          f"gradient checkpointing {'on' if doc['checkpointing']['on'] else 'off'} ({doc['checkpointing']['reason']})")
    print(f"FLOPs per useful token: model 4N = {fl['model']:.3g}, with recomputation {fl['hardware']:.3g}, "
          f"attention {fl['attention']:.3g}; peak "
          f"{'n/a' if doc['peak_flops'] is None else format(doc['peak_flops'] / 1e12, '.0f') + ' TFLOP/s'}")
    print(f"timing: {doc['timing_rule']}")
    if doc["loss"]["vichat"] != "plain":
        print(f"vichat's {doc['loss']['vichat']} loss sends only trained positions ({100 * fl['trained_fraction']:.0f}% of "
              f"the tokens) through the LM head: it executes {fl['head_on_trained']:.3g} FLOPs per token of the 4N; "
              f"MFU counts 4N for both sides, 'exec' what each side computes")
    print(f"{'loop':>26}  {'tokens/s':>9}  {'MFU':>6}  {'exec':>6}  {'HFU':>6}  {'+attn':>6}  {'peak GiB':>8}  {'reserved':>8}  "
          f"{'steps':>5}  {'1st step s':>10}  {'mean loss':>9}  {'held-out':>8}")
    names = {"vichat": f"vichat ({doc['loss']['vichat']} loss)", "peer": "Trainer + peft peer"}
    for key, r in doc["rows"].items():
        res = "-" if r["reserved_peak_bytes"] is None else f"{r['reserved_peak_bytes'] / GIB:.1f}"
        early = "*" if r["stopped_early"] else ""
        print(f"{names[key]:>26}  {r['tokens_per_second']:>9,.0f}  {_pct(r['mfu']):>6}  {_pct(r['mfu_executed']):>6}  "
              f"{_pct(r['hfu']):>6}  "
              f"{_pct(r['mfu_with_attention']):>6}  {r['peak_bytes'] / GIB:>8.2f}  {res:>8}  {r['steps']:>4}{early:1}  "
              f"{r['first_step_seconds'] or 0:>10.2f}  {_num(r['mean_loss']):>9}  {_num(r['val_loss']):>8}")
    lo = doc["loss"]
    if lo["check"] is not None:
        print(f"fused loss check before the runs: {lo['check']}")
    if lo["failure"]:
        print(f"vichat's first run failed ({lo['failure']}); the row above is its rerun with the chunked loss")
    if any(r["stopped_early"] for r in doc["rows"].values()):
        print("* stopped by --time-limit")
    if not all(r["finite"] for r in doc["rows"].values()):
        print("WARNING: a loss is not finite")
    ratio = "n/a" if doc["ratio"] is None else f"{doc['ratio']:.2f}x"
    print(f"\nvichat / peer, useful tokens/s: {ratio}; vichat MFU {_pct(doc['rows']['vichat']['mfu'])} (goal >= 45%)")
    err = pl["error"]
    print(f"planner for vichat's run ({pl['worst_case']}; longest record {pl['longest_record']}, "
          f"{pl['records_at_max_length']} at max length): {pl['predicted_no_margin_bytes'] / GIB:.2f} GiB without margin "
          f"vs {dev.peak_label} {pl['measured_bytes'] / GIB:.2f} GiB: error {'n/a' if err is None else format(err, '+.1%')} "
          f"(goal within 10%); with margin {pl['predicted_bytes'] / GIB:.2f} GiB"
          + (f" vs reserved peak {pl['reserved_peak_bytes'] / GIB:.2f} GiB" if pl["reserved_peak_bytes"] else ""))
    print(f"wall time {doc['wall_seconds']:.0f} s (base built in {md['build_seconds']:.1f} s)")


def write_json(doc: dict[str, Any], path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(doc, indent=2))
