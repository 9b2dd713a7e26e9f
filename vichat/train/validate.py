"""Refuse known-broken settings before any weight is loaded, each with the reason and a way out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..records import VichatError
from .config import TrainConfig, resolve
from .shapes import family_of, resolve_targets

BNB_1451 = "https://github.com/bitsandbytes-foundation/bitsandbytes/issues/1451"
PEFT_2892 = "https://github.com/huggingface/peft/issues/2892"


def validate_config(cfg: TrainConfig, spec: Any, world: int | None = None) -> list[str]:
    """Check ``cfg`` (resolved here if it still has ``auto`` values) against base-model ``spec``.

    ``world``: the processes of the run being started (the trainer passes the launcher's
    ``WORLD_SIZE``); a CPU run under torchrun is a DeepSpeed run too, and gets the same gates.

    Raises :class:`VichatError` for a combination known to fail; returns warnings (strings) for
    ones that run but deserve a second look.
    """
    cfg = resolve(cfg, spec) if "auto" in (cfg.device, cfg.load_in, cfg.compute_dtype) else cfg
    warnings: list[str] = []
    quantized = cfg.load_in in ("8bit", "4bit")
    # DeepSpeed runs: every GPU plan, and any multi-process run (a CPU run under torchrun included).
    deepspeed = cfg.device == "cuda" or (world or 1) > 1

    if quantized and cfg.zero_stage == 3 and deepspeed:
        raise VichatError(
            f"--load-in {cfg.load_in} with --zero-stage 3 is refused: with a bitsandbytes-quantised base, "
            f"ZeRO-3 gives a loss an order of magnitude too high (bitsandbytes #1451, {BNB_1451}), and LoRA "
            f"under ZeRO-3 can save an empty adapter (peft #2892, {PEFT_2892}). Use --zero-stage 2 (the paper's "
            "setup: it shards the small LoRA gradients and optimizer state while the quantised base stays "
            "replicated), or --load-in none to let ZeRO-3 shard a 16-bit base."
        )
    if cfg.load_in == "8bit" and cfg.compute_dtype == "bf16":
        raise VichatError(
            "--load-in 8bit with --compute-dtype bf16 is refused: LLM.int8 (bitsandbytes MatMul8bitLt) casts "
            "its inputs to fp16, so bf16 buys no range and adds a lossy bf16 -> fp16 cast in every layer. "
            "Use --compute-dtype fp16 with 8-bit, or --load-in 4bit / none for bf16."
        )
    if cfg.zero_stage == 3 and deepspeed and not quantized:
        warnings.append(
            "LoRA under ZeRO-3 can save an empty adapter (peft #2892): transformers >= 5 gathers the adapter "
            "in Trainer.save_model; a custom loop must gather it (train_ds.json gets "
            "stage3_gather_16bit_weights_on_model_save=true)."
        )
    if cfg.device == "cpu":
        if cfg.compute_dtype == "fp16":
            warnings.append("fp16 on CPU is slow and some kernels lack it; fp32 (or bf16) is the usual choice.")
        if cfg.gpus * cfg.num_nodes > 1:
            raise VichatError(f"--device cpu runs one process, but GPUs x nodes = {cfg.gpus} x {cfg.num_nodes} (from "
                              "the preset or flags): add --gpus 1 --num-nodes 1, or use --device cuda.")
    if cfg.gpus < 1 or cfg.num_nodes < 1:
        raise VichatError("--gpus and --num-nodes must be at least 1")
    hosts = read_hostfile(cfg.hostfile) if cfg.hostfile else None
    if hosts is not None:
        if cfg.num_nodes > len(hosts):
            raise VichatError(f"--num-nodes {cfg.num_nodes} but {cfg.hostfile} lists {len(hosts)} node(s)")
        short = [h for h, slots in list(hosts.items())[: cfg.num_nodes] if slots < cfg.gpus]
        if short:
            raise VichatError(f"--gpus {cfg.gpus} per node but {cfg.hostfile} gives fewer slots on {', '.join(short)}")
    if cfg.hostfile and cfg.num_nodes < 2:
        warnings.append("--hostfile given with --num-nodes 1: the batch arithmetic assumes one node; pass "
                        "--num-nodes N so the world size (GPUs x nodes) is right.")

    if cfg.lora_r < 1:
        raise VichatError(f"--lora-r must be at least 1, got {cfg.lora_r}")
    if cfg.lora_alpha <= 0:
        raise VichatError(f"--lora-alpha must be positive, got {cfg.lora_alpha}")
    if not 0 <= cfg.lora_dropout < 1:
        raise VichatError(f"--lora-dropout must be in [0, 1), got {cfg.lora_dropout}")
    targets = cfg.lora_targets or tuple(spec.lora_targets)
    arch = spec.architecture
    if family_of(arch) is not None:
        resolve_targets(arch, targets)  # raises naming the unknown module and listing the known ones
    else:
        warnings.append(f"family {arch.family!r} has no module-shape table: LoRA targets are not checked "
                        "and the dry run cannot count LoRA parameters.")
    if cfg.max_length < 16:
        raise VichatError(f"--max-length {cfg.max_length} is too short for a prompt and a response")
    if cfg.max_length > arch.max_positions:
        raise VichatError(f"--max-length {cfg.max_length} exceeds {spec.name}'s {arch.max_positions} positions")
    if cfg.learning_rate <= 0 or cfg.epochs <= 0:
        raise VichatError("--learning-rate and --epochs must be positive")
    for name in ("logging_steps", "eval_steps", "save_steps"):
        if getattr(cfg, name) < 1:
            raise VichatError(f"--{name.replace('_', '-')} must be at least 1")
    if cfg.warmup_steps < 0:
        raise VichatError("--warmup-steps cannot be negative")
    if cfg.device == "cpu" and cfg.optimizer == "paged_adamw_8bit":
        raise VichatError("paged_adamw_8bit pages optimizer state between GPU and CPU memory; it needs --device cuda")
    return warnings


def read_hostfile(path: str) -> dict[str, int] | None:
    """``{host: slots}`` from a DeepSpeed hostfile (``host slots=N`` lines), or None if it can't be read
    here (it may exist only on the launch node)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return None
    hosts: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        try:
            slots = int(parts[1].split("=", 1)[1]) if len(parts) > 1 and parts[1].startswith("slots=") else -1
        except ValueError:
            slots = -1
        if slots < 0:
            raise VichatError(f"{path}:{lineno}: expected 'HOSTNAME slots=N', got {line!r}")
        hosts[parts[0]] = slots
    return hosts


def check_merge(load_in: str, base_model: str = "the base model") -> None:
    """Refuse merging a LoRA adapter into a quantised base (for an export command).

    Merging adds ``B @ A * alpha / r`` to the base weights; on an int8/NF4 base the sum is rounded
    back onto the quantisation grid, so most of the small LoRA update is lost (peft warns about
    rounding errors). Load the base in fp16/bf16 for merging.
    """
    if load_in in ("8bit", "4bit"):
        raise VichatError(
            f"cannot merge a LoRA adapter into {base_model} loaded in {load_in}: "
            "the merged weights would be rounded back to the quantised grid, losing most of the LoRA update. "
            "Load the base unquantised for the export (--load-in none, fp16 or bf16), merge, then quantise "
            "the merged model if needed."
        )
