"""Refuse known-broken settings before any weight is loaded, each with the reason and a way out."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from ..paths import existing_ancestor
from ..records import VichatError
from .config import FIELDS, TrainConfig, field_kind, resolve
from .shapes import family_of, resolve_targets

BNB_1451 = "https://github.com/bitsandbytes-foundation/bitsandbytes/issues/1451"
PEFT_2892 = "https://github.com/huggingface/peft/issues/2892"


#: The largest seed numpy's and torch's generators take (``transformers.set_seed`` seeds both).
MAX_SEED = 2**32 - 1


def setting_name(name: str, origins: Mapping[str, str] | None = None) -> str:
    """How the user gave setting ``name``: ``FILE:LINE: key`` for a YAML value (``origins``, from
    :func:`vichat.train.config.build_config_origins`), else its flag (``--max-length``), also for a
    preset's value (the flag is how to change it)."""
    if origins and name in origins:
        return origins[name]
    return "--" + name.replace("_", "-")


def check_values(cfg: TrainConfig, origins: Mapping[str, str] | None = None) -> None:
    """Range checks of single values (no base model needed), each error naming the flag or the YAML
    file and key the value came from. Part of :func:`validate_config`."""

    def bad(name: str, why: str) -> VichatError:
        value = getattr(cfg, name)
        shown = f"{value:g}" if isinstance(value, float) else value
        return VichatError(f"{setting_name(name, origins)} {shown}: {why}")

    for name in FIELDS:
        value = getattr(cfg, name)
        if field_kind(name) == "float" and value is not None and not math.isfinite(value):
            raise bad(name, "must be a finite number")
    if cfg.lora_r < 1:
        raise bad("lora_r", "the LoRA rank must be at least 1")
    if cfg.lora_alpha <= 0:
        raise bad("lora_alpha", "LoRA alpha must be positive")
    if not 0 <= cfg.lora_dropout < 1:
        raise bad("lora_dropout", "dropout must be in [0, 1)")
    if cfg.max_length < 16:
        raise bad("max_length", "too short for a prompt and a response (at least 16 tokens)")
    if cfg.learning_rate <= 0:
        raise bad("learning_rate", "the learning rate must be positive")
    if cfg.epochs <= 0:
        raise bad("epochs", "the number of epochs must be positive (fractions such as 0.5 are allowed)")
    if cfg.weight_decay < 0:
        raise bad("weight_decay", "weight decay cannot be negative (0 = none)")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            raise bad(name, "Adam's betas must be in [0, 1) (the usual 0.9 and 0.999)")
    if cfg.adam_epsilon < 0:
        raise bad("adam_epsilon", "Adam's epsilon cannot be negative (the usual 1e-8)")
    if cfg.max_grad_norm < 0:
        raise bad("max_grad_norm", "the clipping norm cannot be negative (0 turns clipping off)")
    if cfg.gpu_mem_gb <= 0:
        raise bad("gpu_mem_gb", "the memory per device must be positive (GiB)")
    if cfg.total_batch_size < 1:
        raise bad("total_batch_size", "must be at least 1")
    for name in ("micro_batch_size", "gradient_accumulation"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            raise bad(name, "must be at least 1 (or left out to be worked out)")
    if cfg.gpus < 1 or cfg.num_nodes < 1:
        raise bad("gpus" if cfg.gpus < 1 else "num_nodes", "must be at least 1")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise bad("seed", f"the seed must be between 0 and {MAX_SEED} (numpy's and torch's generators)")
    for name in ("logging_steps", "eval_steps", "save_steps"):
        if getattr(cfg, name) < 1:
            raise bad(name, "must be at least 1")
    if cfg.warmup_steps < 0:
        raise bad("warmup_steps", "the warm-up cannot be negative (0 = none)")
    if cfg.save_total_limit < 1:
        raise bad("save_total_limit", "must be at least 1: it is how many checkpoints are kept, and a run keeps at "
                  "least the latest so that --resume auto can continue it (to keep them all, give a number "
                  "above the run's steps / --save-steps)")
    if cfg.output_dir:
        check_output_dir(cfg.output_dir, setting_name("output_dir", origins))


def check_output_dir(output_dir: str, label: str = "--output-dir") -> None:
    """Refuse an output folder that cannot be one: an existing file, or a path under a file."""
    path = Path(output_dir).expanduser()
    if path.exists() and not path.is_dir():
        raise VichatError(f"{label} {output_dir}: this is an existing file, not a folder; choose a folder "
                          "(it is created if missing)")
    parent = existing_ancestor(path)
    if not parent.is_dir():
        raise VichatError(f"{label} {output_dir}: {parent} is a file, so no folder can be created under "
                          "it; choose another --output-dir")


#: How to run on CPUs instead (the end of the messages that refuse a GPU run without GPUs).
CPU_PROCESSES = ("add --gpus 1 --num-nodes 1 (one process); for several CPU processes start them with torchrun: "
                 "`torchrun --standalone --nproc_per_node N -m vichat.train.launch PRESET --device cpu ...` "
                 "(docs/training.md, \"Several processes\")")


def check_devices(cfg: TrainConfig, *, cuda: bool, cuda_devices: int | None = None,
                  torch_version: str | None = None) -> None:
    """Refuse, before any launcher starts or anything loads, a run that needs GPUs this machine lacks.

    ``cfg`` as the user gave it (``device`` may still be ``auto``); ``cuda``: ``torch.cuda.is_available()``;
    ``cuda_devices``: the GPUs visible here (checked against ``--gpus`` when given). A run with
    ``--hostfile`` is not checked: its GPUs are on the nodes the hostfile lists."""
    if cfg.hostfile:
        return
    processes = cfg.gpus * cfg.num_nodes
    torch_here = f"torch {torch_version}" if torch_version else "torch"
    if cfg.device == "cuda" and not cuda:
        raise VichatError(f"--device cuda, but {torch_here} here has no usable CUDA GPU (torch.cuda.is_available() is "
                          "False: a CPU-only build, or no GPU visible). Use --device cpu, or leave --device auto "
                          "(it picks the CPU here)" + (f"; and for a CPU run {CPU_PROCESSES}" if processes > 1 else ""))
    if cfg.device == "auto" and not cuda and processes > 1:
        raise VichatError(f"this run asks for {processes} GPU processes (--gpus {cfg.gpus} x --num-nodes "
                          f"{cfg.num_nodes}, from the preset, the config file or the flags), but there is no CUDA "
                          f"GPU here ({torch_here}: torch.cuda.is_available() is False), so the DeepSpeed launcher "
                          f"would start {processes} workers that all fail. For a CPU run {CPU_PROCESSES}")
    if cfg.device != "cpu" and cuda and cuda_devices is not None and cfg.num_nodes == 1 and cfg.gpus > cuda_devices:
        raise VichatError(f"--gpus {cfg.gpus}, but {cuda_devices} CUDA GPU(s) are visible here: use --gpus "
                          f"{cuda_devices} (the total batch is split over them), or a --hostfile for several nodes")


def validate_config(cfg: TrainConfig, spec: Any, world: int | None = None,
                    origins: Mapping[str, str] | None = None) -> list[str]:
    """Check ``cfg`` (resolved here if it still has ``auto`` values) against base-model ``spec``.

    ``world``: the processes of the run being started (the trainer passes the launcher's
    ``WORLD_SIZE``); a CPU run under torchrun is a DeepSpeed run too, and gets the same gates.
    ``origins``: the settings given explicitly and where (``{setting: "--flag"}`` for a flag,
    ``{setting: "FILE:LINE: key"}`` for a YAML value), so an error names the file and key rather
    than a flag the user never typed, and a warning about ``--group-by-length`` with ``--packing``
    comes only when it was asked for (it is on by default). None: not known (no such warning).

    Raises :class:`VichatError` for a combination known to fail; returns warnings (strings) for
    ones that run but deserve a second look.
    """
    check_values(cfg, origins)
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
            raise VichatError(f"--device cpu: `vichat train` runs one CPU process, but GPUs x nodes = {cfg.gpus} x "
                              f"{cfg.num_nodes} (from the preset, the config file or the flags): {CPU_PROCESSES}; or "
                              "use --device cuda on a machine with GPUs.")
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

    targets = cfg.lora_targets or tuple(spec.lora_targets)
    arch = spec.architecture
    if family_of(arch) is not None:
        resolve_targets(arch, targets)  # raises naming the unknown module and listing the known ones
    else:
        warnings.append(f"family {arch.family!r} has no module-shape table: LoRA targets are not checked "
                        "and the dry run cannot count LoRA parameters.")
    if cfg.max_length > arch.max_positions:
        raise VichatError(f"{setting_name('max_length', origins)} {cfg.max_length} exceeds {spec.name}'s "
                          f"{arch.max_positions} positions")
    if cfg.packing and arch.family == "bloom":
        raise VichatError(
            f"--packing is refused for {spec.name} (BLOOM): BLOOM's ALiBi attention ignores position_ids, so "
            "packed samples would attend to each other. Use --group-by-length instead (about as little padding)"
        )
    if cfg.packing and cfg.group_by_length and origins is not None and "group_by_length" in origins:
        warnings.append("--packing with --group-by-length: packs are all about --max-length long, so they are "
                        "batched in shuffled order and --group-by-length has no effect on them; drop it (or pass "
                        "--no-group-by-length).")
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
