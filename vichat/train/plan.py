"""The dry-run planner: what a run will do and whether it fits, from settings and shape numbers only.

No weights, no network, no torch: :func:`plan` works out the batch split, the trainable LoRA
parameters, the steps and tokens, and a per-GPU memory estimate with a verdict.
"""

from __future__ import annotations

import math
import shlex
import textwrap
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from ..records import VichatError
from .batch import Batch, solve_batch, steps_per_epoch
from .config import TrainConfig, resolve
from .data_stats import DataStats, data_stats
from .ds_config import find_deepspeed_config
from .launcher import launch_command
from .loss import planned_loss
from .memory import GIB, MemoryEstimate, estimate_memory, float_param_bytes, largest_fitting_micro_batch
from .shapes import (computed_total_params, family_of, lora_input_features, lora_module_count, lora_param_count,
                     quantizable_params, resolve_targets)
from .validate import validate_config


@dataclass
class Plan:
    """Everything a dry run reports; :meth:`to_dict` for ``--json``, :meth:`report` for people."""

    config: TrainConfig
    base_model: str
    hub_id: str
    architecture: dict[str, Any]
    batch: Batch
    max_micro_batch: int
    lora_targets: list[str]
    lora_params: int | None
    total_params: int
    data: DataStats
    avg_tokens: float | None
    steps_per_epoch: int | None
    total_steps: int | None
    tokens: int | None
    memory: MemoryEstimate
    deepspeed: str | None
    launch: list[str]
    arch: Any = None
    loss: str = "plain"  # the loss the memory estimate assumes (vichat.train.loss.planned_loss)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.memory.fits

    @property
    def verdict(self) -> str:
        c, m = self.config, self.memory
        gpu = "GPU" if c.world_size == 1 else "GPUs"
        where = f"{c.world_size} x {c.gpu_mem_gb:g} GiB " + (gpu if c.device == "cuda" else "(CPU RAM)")
        per = f"{m.total / GIB:.1f} of {c.gpu_mem_gb:g} GiB per device at micro-batch {self.batch.micro}"
        if m.fits:
            return f"fits on {where}: {per}"
        if self.max_micro_batch == 0:
            options = [o for o, use in (("--gradient-checkpointing", not c.gradient_checkpointing),
                                        ("--load-in 8bit or 4bit", c.load_in == "none"),
                                        ("--load-in 4bit", c.load_in == "8bit"),
                                        ("a shorter --max-length", True), ("GPUs with more memory", True)) if use]
            hint = "even micro-batch 1 does not fit; try " + ", ".join(options)
        else:
            per_gpu = self.batch.per_gpu
            best = max(d for d in range(1, self.max_micro_batch + 1) if per_gpu % d == 0)
            hint = f"use --micro-batch-size {best} (or leave it out to pick the largest that fits)"
        return f"does NOT fit on {where}: {per}; {hint}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of the plan."""
        return {
            "config": self.config.to_dict(),
            "base_model": self.base_model,
            "hub_id": self.hub_id,
            "architecture": self.architecture,
            "batch": {"total": self.batch.total, "micro": self.batch.micro, "gradient_accumulation":
                      self.batch.accumulation, "world_size": self.batch.world, "max_micro_batch_that_fits":
                      self.max_micro_batch},
            "lora_targets": self.lora_targets,
            "trainable_params": self.lora_params,
            "total_params": self.total_params,
            "data": {"records": self.data.records, "avg_tokens": self.avg_tokens, "source": self.data.source},
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "tokens": self.tokens,
            "memory_gib": self.memory.gib(),
            "loss": self.loss,
            "fits": self.fits,
            "verdict": self.verdict,
            "deepspeed_config": self.deepspeed,
            "launch_command": self.launch,
            "warnings": self.warnings,
            "notes": self.notes,
        }

    def report(self) -> str:
        """The human-readable dry-run report."""
        return format_report(self)


def _paper_notes(spec: Any, arch: Any, targets: list[str], r: int, n_lora: int | None) -> list[str]:
    notes: list[str] = []
    fam = family_of(arch)
    if fam is None or n_lora is None:
        return notes
    if fam.name == "bloom" and arch.n_layers == 30 and arch.hidden_size == 4096:
        combos = {"query_key_value": ["query_key_value"], "query_key_value+dense": ["query_key_value", "dense"],
                  "dense_h_to_4h": ["dense_h_to_4h"], "dense": ["dense"]}
        alts = ", ".join(f"{k} {lora_param_count(arch, v, 8):,}" for k, v in combos.items())
        notes.append(
            f"The paper reports ~4.2M trainable LoRA parameters for Bloomz (Table II); no r=8 setting on "
            f"BLOOM-7b1 gives that ({alts}). 4,194,304 is exactly alpaca-lora's LLaMA-7B count (q_proj+v_proj, "
            f"r=8, 32 layers), the codebase the paper used, so the figure was likely carried over. This run: "
            f"{n_lora:,}."
        )
    if fam.name == "gptj" and arch.n_layers == 28 and arch.hidden_size == 4096:
        qv = lora_param_count(arch, ["q_proj", "v_proj"], 8)
        same = "matches" if sorted(targets) == ["q_proj", "v_proj"] and r == 8 else "differs from"
        notes.append(f"GPT-J q_proj+v_proj at r=8 gives {qv:,}, the paper's 3.6M (Table II, truncated); "
                     f"this run's {n_lora:,} {same} it.")
    computed = computed_total_params(arch)
    if computed and arch.n_params and abs(computed - arch.n_params) > 1e-4 * computed:
        notes.append(f"{spec.name}: architecture.n_params {arch.n_params:,} differs from the count from its shapes "
                     f"({computed:,}, what transformers builds); the memory estimate uses the latter.")
    return notes


def plan(
    cfg: TrainConfig,
    spec: Any,
    n_train_records: int | None = None,
    avg_tokens: float | None = None,
    gpus: int | None = None,
    gpu_mem_gb: float | None = None,
    count_tokens: Callable[[str], int] | None = None,
    origins: Mapping[str, str] | None = None,
) -> Plan:
    """Plan the run ``cfg`` on base model ``spec`` without loading anything.

    ``gpus`` / ``gpu_mem_gb`` override the config's (the presets use the paper's 4 x 24 GiB).
    Records and mean tokens come from the arguments, else a prepared data dir (``cfg.data``), else
    the paper's Table I for the chat/doctor mixtures. Raises :class:`VichatError` for refused
    settings (see :func:`validate_config`) and impossible batch splits. ``origins``: where the settings
    came from (:func:`vichat.train.config.build_config_origins`), so errors name a YAML file and key.
    """
    if gpus is not None:
        cfg = replace(cfg, gpus=gpus)
    if gpu_mem_gb is not None:
        cfg = replace(cfg, gpu_mem_gb=gpu_mem_gb)
    raw = cfg
    cfg = resolve(cfg, spec)
    warnings = validate_config(cfg, spec, origins=origins)
    arch = spec.architecture
    known = family_of(arch) is not None
    targets = resolve_targets(arch, cfg.lora_targets) if known else list(cfg.lora_targets or ())
    n_lora = lora_param_count(arch, targets, cfg.lora_r) if known else None
    world = cfg.world_size
    deepspeed = cfg.device == "cuda"
    mem_args: dict[str, Any] = dict(
        arch=arch, seq=cfg.max_length, load_in=cfg.load_in, compute_dtype=cfg.compute_dtype,
        checkpointing=cfg.gradient_checkpointing, n_lora=n_lora or 0,
        lora_in_features=lora_input_features(arch, targets) if known else 0,
        lora_modules=lora_module_count(arch, targets) if known else 0,
        lora_r=cfg.lora_r, zero_stage=cfg.zero_stage, world=world, deepspeed=deepspeed,
        optimizer=cfg.optimizer, device=cfg.device, budget_gib=cfg.gpu_mem_gb,
        loss=planned_loss(cfg.loss, device=cfg.device, zero_stage=cfg.zero_stage, world=world),
    )
    per_gpu = solve_batch(cfg.total_batch_size, world).per_gpu  # raises if total % world != 0
    cap = largest_fitting_micro_batch(per_gpu, **mem_args)
    batch = solve_batch(cfg.total_batch_size, world, cfg.micro_batch_size, cfg.gradient_accumulation, cap=cap)
    memory = estimate_memory(micro=batch.micro, **mem_args)

    stats = data_stats(cfg.data, count_tokens) if n_train_records is None or avg_tokens is None else None
    records = n_train_records if n_train_records is not None else (stats.records if stats else None)
    avg = avg_tokens if avg_tokens is not None else (stats.avg_tokens if stats else None)
    source = stats.source if stats else "given"
    if stats and (n_train_records is not None or avg_tokens is not None):
        source += " (partly overridden)"
    if records is not None and records < 1:
        if n_train_records is not None:
            raise VichatError(f"--records {n_train_records}: a run needs at least one training record")
        raise VichatError(f"--data {cfg.data}: no training records ({source.split(' (')[0]} is empty); a run needs at "
                          "least one. Check the data (`vichat data prepare` lists what it kept and skipped)")
    data = DataStats(records, avg, source)
    spe = total = tokens = None
    if records:
        sequences = records
        if cfg.packing and avg:
            sequences = math.ceil(records * min(avg, cfg.max_length) / cfg.max_length)
        spe = steps_per_epoch(sequences, batch)
        total = math.ceil(cfg.epochs * spe)
        if avg:
            tokens = round(records * min(avg, cfg.max_length) * cfg.epochs)
        if total <= cfg.warmup_steps:
            warnings.append(f"warm-up ({cfg.warmup_steps} steps) is not shorter than the run ({total} steps): "
                            "the learning rate never reaches its peak; lower --warmup-steps")
    notes = _paper_notes(spec, arch, targets, cfg.lora_r, n_lora)
    if stats and stats.source.startswith("paper"):
        notes.append("Records and tokens are the paper's Table I sizes; pass a prepared data dir (--data DIR) or "
                     "--records/--avg-tokens to plan for your data.")
    if cfg.load_in != "none":
        how = ("DeepSpeed's fp16/bf16 engine casts the unquantised parameters (embeddings, norms, biases, LoRA) to "
               f"{cfg.compute_dtype} and keeps fp32 master copies of the LoRA weights" if deepspeed and
               cfg.compute_dtype != "fp32" else "peft.prepare_model_for_kbit_training keeps the unquantised "
               "parameters (embeddings, norms, biases) in fp32")
        notes.append(f"Quantised base, replicated on every GPU: {how}.")
    ds_path = None
    if deepspeed:
        found = find_deepspeed_config(cfg.deepspeed_config)
        ds_path = f"{found or cfg.deepspeed_config + ' (built-in copy)'} with ZeRO-{cfg.zero_stage}"
    return Plan(
        config=replace(cfg, micro_batch_size=batch.micro, gradient_accumulation=batch.accumulation),
        base_model=spec.name, hub_id=raw.base_path or spec.hub_id,
        architecture={"family": arch.family, "n_layers": arch.n_layers, "hidden_size": arch.hidden_size,
                      "n_heads": arch.n_heads, "vocab_size": arch.vocab_size,
                      "intermediate_size": arch.intermediate_size, "max_positions": arch.max_positions},
        batch=batch, max_micro_batch=cap, lora_targets=targets, lora_params=n_lora,
        total_params=computed_total_params(arch) or arch.n_params, data=data, avg_tokens=avg,
        steps_per_epoch=spe, total_steps=total, tokens=tokens, memory=memory, deepspeed=ds_path,
        launch=launch_command(raw), arch=arch, loss=mem_args["loss"], warnings=warnings, notes=notes,
    )


def _n(x: float | int | None, unit: str = "") -> str:
    return "unknown" if x is None else f"{x:,.0f}{unit}"


_LOSS_NOTE = {"plain": ": b x s x vocab logits, 12 bytes each at the backward peak",
              "chunked": ": one chunk of logits at a time", "fused": ": no logits in memory on CUDA (on CPU counted as plain)"}


def format_report(p: Plan) -> str:
    """The plan as aligned text lines."""
    c, b, a, m = p.config, p.batch, p.architecture, p.memory.gib()
    pct = f" ({100 * p.lora_params / p.total_params:.3f}% of {p.total_params:,})" if p.lora_params and p.total_params else ""
    base = {"8bit": "int8 (LLM.int8)", "4bit": "4-bit NF4", "none": c.compute_dtype}[c.load_in]
    quant = ""
    if c.load_in != "none" and family_of(p.arch) is not None:
        rest = "fp32" if float_param_bytes(c.compute_dtype, p.deepspeed is not None) == 4 else c.compute_dtype
        quant = f"  ({quantizable_params(p.arch) / 1e9:.2f}B quantised linear weights, the rest {rest})"
    lines = [
        f"vichat train {c.preset or c.base_model}: dry run (no weights loaded, no network)",
        "",
        f"  base model   {p.base_model} ({p.hub_id}), {a['family']}: {a['n_layers']} layers, hidden {a['hidden_size']:,}, "
        f"{a['n_heads']} heads, vocab {a['vocab_size']:,}",
        f"  LoRA         r={c.lora_r} alpha={c.lora_alpha:g} dropout={c.lora_dropout:g} on {', '.join(p.lora_targets)}",
        f"  trainable    {_n(p.lora_params)} parameters{pct}",
        f"  template     {c.template}; data {c.data}",
        f"  records      {_n(p.data.records)} x {_n(p.avg_tokens)} tokens avg ({p.data.source})",
        f"  batch        {b.total} = micro-batch {b.micro} x gradient accumulation {b.accumulation} x "
        f"{b.world} device(s); largest micro-batch that fits: {p.max_micro_batch}",
        f"  steps        {_n(p.steps_per_epoch)} per epoch, {_n(p.total_steps)} total ({c.epochs:g} epochs), "
        f"warm-up {c.warmup_steps}, lr {c.learning_rate:g} ({c.lr_scheduler}), {c.optimizer}",
        f"  tokens       {_n(p.tokens)} processed (records x min(avg, {c.max_length}) x epochs)",
        f"  precision    base {base}, compute {c.compute_dtype}, gradient checkpointing "
        f"{'on' if c.gradient_checkpointing else 'off'}, max length {c.max_length}",
        f"  deepspeed    {p.deepspeed or 'off (CPU run)'}",
        "",
        f"  memory per {'GPU' if c.device == 'cuda' else 'process'} (GiB, micro-batch {b.micro}):",
        f"    base weights      {m['base_weights']:7.2f}{quant}",
        f"    LoRA weights      {m['lora_weights']:7.2f}",
        f"    LoRA gradients    {m['lora_gradients']:7.2f}",
        f"    optimizer states  {m['optimizer_states']:7.2f}",
        f"    activations       {m['activations']:7.2f}  (saved for backward; gradient checkpointing "
        f"{'on' if c.gradient_checkpointing else 'off'})",
        f"    loss (logits)     {m['logits']:7.2f}  ({p.loss} loss{_LOSS_NOTE.get(p.loss, '')})",
        f"    layer backward    {m['backward']:7.2f}  (only the larger of these two counts: they are not alive together)",
        f"    margin            {m['margin']:7.2f}  (CUDA context 1.5 + 10%)",
        f"    total             {m['total']:7.2f}  of {c.gpu_mem_gb:g}",
        "",
        f"  verdict      {p.verdict}",
        f"  command      {shlex.join(p.launch)}",
    ]
    for label, items in (("warning", p.warnings), ("note", p.notes)):
        for text in items:
            lines.append(textwrap.fill(text, 110, initial_indent=f"  {label:<13}", subsequent_indent=" " * 15))
    return "\n".join(lines)
