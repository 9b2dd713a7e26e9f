"""The training configuration: one dataclass the dry-run planner and the trainer both consume.

Where a value comes from, lowest to highest precedence: the dataclass default, the preset
(:mod:`vichat.train.presets`), a YAML file (``--config file.yaml``), command-line flags. Keys are
the field names (``lora_r`` or ``lora-r``). ``"auto"`` values are settled by :func:`resolve`.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from ..data.tokenize import MAX_LENGTH
from ..records import VichatError

LOAD_IN = ("auto", "8bit", "4bit", "none")
DTYPES = ("auto", "fp16", "bf16", "fp32")
DEVICES = ("auto", "cuda", "cpu")
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_bnb_8bit", "paged_adamw_8bit")
SCHEDULERS = ("linear", "cosine", "constant")
ZERO_STAGES = (0, 1, 2, 3)
LOSSES = ("auto", "fused", "chunked", "plain")  # vichat.train.loss


def _f(default: Any, help: str, choices: tuple = (), flag: bool = True) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, "flag": flag})


@dataclass
class TrainConfig:
    """Every setting of a LoRA fine-tuning run (see docs/training.md for each one)."""

    preset: str | None = _f(None, "Preset the run started from (informational; the positional PRESET).", flag=False)
    base_model: str = _f("tiny", "Registered base-model name (`vichat plugins` lists them).")
    base_path: str | None = _f(None, "Local folder with the base model's weights and tokenizer, instead of its hub "
                                     "id (the same --base-path as every command).")
    template: str = _f("chat", "Prompt template name (chat, doctor, ...).")
    data: str = _f("chat", "Prepared data dir (DIR/train.jsonl + validation.jsonl), or a mixture/dataset name.")
    output_dir: str | None = _f(None, "Where the adapter and checkpoints go (default runs/<preset>).")
    lora_r: int = _f(8, "LoRA rank r.")
    lora_alpha: int = _f(16, "LoRA alpha (the update is scaled by alpha / r).")
    lora_dropout: float = _f(0.05, "Dropout on the LoRA input.")
    lora_targets: tuple[str, ...] | None = _f(None, "Modules to adapt, comma-separated (default: the base model's).")
    max_length: int = _f(MAX_LENGTH, "Maximum tokens per example (prompt + response + EOS).")
    learning_rate: float = _f(3e-4, "Peak learning rate.")
    optimizer: str = _f("adamw_torch", "Optimizer.", OPTIMIZERS)
    lr_scheduler: str = _f("linear", "Learning-rate schedule after warm-up.", SCHEDULERS)
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    adam_beta1: float = _f(0.9, "Adam beta1.")
    adam_beta2: float = _f(0.999, "Adam beta2.")
    adam_epsilon: float = _f(1e-8, "Adam epsilon.")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    epochs: float = _f(2.0, "Passes over the training data.")
    total_batch_size: int = _f(128, "Examples per optimizer step, all GPUs together.")
    micro_batch_size: int | None = _f(None, "Examples per GPU per forward pass (default: largest that fits).")
    gradient_accumulation: int | None = _f(None, "Micro-batches per optimizer step (default: worked out).")
    gpus: int = _f(1, "GPUs per node.")
    num_nodes: int = _f(1, "Nodes (with --hostfile).")
    hostfile: str | None = _f(None, "DeepSpeed hostfile for a multi-node run (passed to the launcher).")
    device: str = _f("auto", "cuda or cpu; auto = cuda when available (a dry run plans for GPUs).", DEVICES)
    gpu_mem_gb: float = _f(24.0, "Memory per GPU in GiB the plan checks against (RAM on CPU).")
    load_in: str = _f("auto", "Base weights: 8bit, 4bit (NF4) or none; auto = 8bit on GPU, none on CPU.", LOAD_IN)
    compute_dtype: str = _f("auto", "Compute dtype; auto = fp16 on GPU, fp32 on CPU.", DTYPES)
    loss: str = _f("auto", "LM-head loss: fused (cut-cross-entropy: CUDA kernel; on CPU its torch.compile version), "
                   "chunked (pure torch), "
                   "plain (full logits); auto = fused on CUDA when installed, else chunked. Only plain "
                   "materialises the batch x sequence x vocabulary logits.", LOSSES)
    gradient_checkpointing: bool = _f(True, "Recompute activations in backward to save memory.")
    zero_stage: int = _f(2, "DeepSpeed ZeRO stage (0 = no sharding; 3 is refused with quantized bases).", ZERO_STAGES)
    deepspeed_config: str = _f("train_ds.json", "DeepSpeed config whose 'auto' values are filled from these settings.")
    seed: int = _f(42, "Random seed.")
    warmup_steps: int = _f(100, "Linear warm-up steps.")
    logging_steps: int = _f(10, "Log every N optimizer steps.")
    eval_steps: int = _f(200, "Evaluate on validation.jsonl every N steps.")
    save_steps: int = _f(200, "Checkpoint every N steps.")
    save_total_limit: int = _f(3, "Checkpoints kept.")
    packing: bool = _f(False, "Pack several examples into each max_length sequence.")
    group_by_length: bool = _f(True, "Batch examples of similar length together (less padding); --no-group-by-length for shuffled batches.")
    resume: str | None = _f(None, "Resume from a checkpoint dir, or 'auto' for the latest in output_dir.")

    @property
    def world_size(self) -> int:
        """Data-parallel processes: GPUs per node x nodes (1 on CPU)."""
        return 1 if self.device == "cpu" else self.gpus * self.num_nodes

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        d = asdict(self)
        if d["lora_targets"] is not None:
            d["lora_targets"] = list(d["lora_targets"])
        return d


FIELDS = {f.name: f for f in fields(TrainConfig)}


def field_kind(name: str) -> str:
    """The base type of a field: "int", "float", "bool", "str" or "tuple"."""
    t = str(FIELDS[name].type)
    for kind in ("tuple", "bool", "int", "float", "str"):
        if t.startswith(kind):
            return kind
    raise AssertionError(t)  # pragma: no cover


def field_default(name: str) -> Any:
    f = FIELDS[name]
    return f.default if f.default is not MISSING else None


#: Settings that were renamed: the old name still works for a while, with a warning.
RENAMED = {"model_path": "base_path"}


def _current_name(key: str, where: str) -> str:
    name = str(key).replace("-", "_")
    if name in RENAMED:
        new = RENAMED[name]
        warnings.warn(f"{where}: {key!r} is renamed {new!r} (--{new.replace('_', '-')}); the old name will go",
                      FutureWarning, stacklevel=3)
        return new
    return name


def unknown_key_error(key: str, where: str) -> VichatError:
    """An error naming an unknown setting, where it was found, and the closest known one."""
    close = difflib.get_close_matches(key.replace("-", "_"), list(FIELDS), n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return VichatError(f"{where}: unknown setting {key!r}.{hint} Known settings: {', '.join(FIELDS)}.")


def coerce(name: str, value: Any, where: str) -> Any:
    """``value`` converted to the type of field ``name``; a :class:`VichatError` naming ``where`` if it can't be."""
    if value is None:
        if "None" in str(FIELDS[name].type):
            return None
        raise VichatError(f"{where}: {name} cannot be empty")
    kind = field_kind(name)
    try:
        if kind == "tuple":
            items = value.split(",") if isinstance(value, str) else list(value)
            value = tuple(str(v).strip() for v in items if str(v).strip())
        elif kind == "bool":
            if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on", "false", "no", "0", "off"):
                value = value.lower() in ("true", "yes", "1", "on")
            elif not isinstance(value, bool):
                raise ValueError
        elif kind == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            value = int(value)
        elif kind == "float":
            if isinstance(value, bool):
                raise ValueError
            value = float(value)  # YAML 1.1 reads "3e-4" as a string
        else:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ValueError
            value = str(value)
    except (TypeError, ValueError):
        raise VichatError(f"{where}: {name}={value!r} is not a valid {kind}") from None
    choices = FIELDS[name].metadata.get("choices") or ()
    if choices and value not in choices:
        raise VichatError(f"{where}: {name}={value!r} is not one of {', '.join(map(str, choices))}")
    return value


def apply(cfg: TrainConfig, values: Mapping[str, Any], where: str) -> TrainConfig:
    """A copy of ``cfg`` with ``values`` (keys with ``-`` or ``_``) checked, coerced and applied."""
    changes: dict[str, Any] = {}
    for key, value in values.items():
        name = _current_name(key, where)
        if name not in FIELDS:
            raise unknown_key_error(str(key), where)
        changes[name] = coerce(name, value, f"{where} ({key})")
    return replace(cfg, **changes)


def setting_name(key: Any) -> str:
    """The setting a YAML key or flag names (``lora-r`` and ``lora_r`` are one; old names renamed)."""
    name = str(key).replace("-", "_")
    return RENAMED.get(name, name)


def read_yaml_lines(path: str | Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The mapping in a YAML config file and the line of each key. Errors name the file and line: an
    unknown key (with the closest known setting), a setting given twice (``lora_r`` and ``lora-r``
    are the same setting)."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise VichatError(f"--config {path}: cannot read the file ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise VichatError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise VichatError(f"{path}: expected a mapping of setting: value, got {type(data).__name__}")
    lines: dict[str, int] = {}
    first: dict[str, tuple[str, int]] = {}  # setting -> (key as written, line) of its first appearance
    for key_node, _ in node.value if node is not None else ():
        key, line = key_node.value, key_node.start_mark.line + 1
        name = setting_name(key)
        if name in first:
            was, at = first[name]
            same = "" if was == key else f" (as {was!r})"
            raise VichatError(f"{path}:{line}: {key!r} is given twice: it was set on line {at}{same} already, and "
                              "only one value can apply; remove one of them")
        first[name] = (key, line)
        lines.setdefault(key, line)
    for key in data:
        if str(key).replace("-", "_") not in FIELDS and str(key).replace("-", "_") not in RENAMED:
            raise unknown_key_error(str(key), f"{path}:{lines.get(key, 1)}")
    return data, {str(k): v for k, v in lines.items()}


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file; errors name the file (and line for unknown or repeated keys)."""
    return read_yaml_lines(path)[0]


def build_config_origins(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[TrainConfig, dict[str, str]]:
    """:func:`build_config`, and where each explicitly given setting came from: ``{name: "--flag"}`` for
    a flag, ``{name: "FILE:LINE: key"}`` for a YAML value (what an error about that value names)."""
    from .presets import get_preset

    file_values, lines = read_yaml_lines(config_file) if config_file else ({}, {})
    file_preset = file_values.get("preset")
    if preset and file_preset is not None and str(file_preset) != preset:
        raise VichatError(
            f"preset {preset!r} is named on the command line, but {config_file}:{lines.get('preset', 1)} says "
            f"preset: {file_preset}; a run starts from one preset: drop one of the two (the command line's "
            "is not silently preferred)"
        )
    name = preset or file_preset
    cfg = TrainConfig()
    origins: dict[str, str] = {}
    if name:
        cfg = apply(cfg, {**get_preset(str(name)).values, "preset": str(name)}, f"preset {name!r}")
    if file_values:
        values = {k: v for k, v in file_values.items() if k != "preset"}
        cfg = apply(cfg, values, str(config_file))
        for key in values:
            origins[setting_name(key)] = f"{config_file}:{lines.get(str(key), 1)}: {key}"
    if overrides:
        given = {k: v for k, v in overrides.items() if v is not None}
        cfg = apply(cfg, given, "command line")
        for key in given:
            origins[setting_name(key)] = "--" + setting_name(key).replace("_", "-")
    return cfg, origins


def build_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Defaults < preset < YAML file < ``overrides`` (flags). A YAML ``preset:`` key is used when
    no positional preset is given; a different preset on the command line and in the file is an error."""
    return build_config_origins(preset, config_file, overrides)[0]


def resolve(cfg: TrainConfig, spec: Any = None, cuda: bool | None = None) -> TrainConfig:
    """Settle the ``auto`` values. ``cuda=None`` (dry run) plans for GPUs without importing torch;
    the trainer passes ``torch.cuda.is_available()``."""
    device = cfg.device
    if device == "auto":
        device = "cpu" if cuda is False else "cuda"
    load_in = cfg.load_in if cfg.load_in != "auto" else ("8bit" if device == "cuda" else "none")
    dtype = cfg.compute_dtype if cfg.compute_dtype != "auto" else ("fp16" if device == "cuda" else "fp32")
    targets = cfg.lora_targets if cfg.lora_targets else (tuple(spec.lora_targets) if spec is not None else None)
    out = cfg.output_dir or f"runs/{cfg.preset or cfg.base_model + '-' + cfg.template}"
    return replace(cfg, device=device, load_in=load_in, compute_dtype=dtype, lora_targets=targets, output_dir=out)


def training_arguments(cfg: TrainConfig, micro_batch: int, accumulation: int, *, output_dir: str,
                       world: int = 1, deepspeed: Any = None) -> dict[str, Any]:
    """The keywords of transformers 5 ``TrainingArguments`` for a resolved config: what the trainer
    runs with (and what a test compares a filled DeepSpeed config against).

    Logging, evaluation and saving are vichat's callback's (per step), and length grouping is
    vichat's own batch sampler, so Trainer's versions of them are off."""
    return {
        "output_dir": output_dir,
        "per_device_train_batch_size": micro_batch, "per_device_eval_batch_size": micro_batch,
        "gradient_accumulation_steps": accumulation, "num_train_epochs": cfg.epochs,
        "learning_rate": cfg.learning_rate, "weight_decay": cfg.weight_decay, "adam_beta1": cfg.adam_beta1,
        "adam_beta2": cfg.adam_beta2, "adam_epsilon": cfg.adam_epsilon, "max_grad_norm": cfg.max_grad_norm,
        "warmup_steps": cfg.warmup_steps, "lr_scheduler_type": cfg.lr_scheduler,
        "fp16": cfg.compute_dtype == "fp16" and cfg.device == "cuda", "bf16": cfg.compute_dtype == "bf16",
        "logging_strategy": "no", "eval_strategy": "no", "save_strategy": "no",  # the callback decides, per step
        "save_total_limit": cfg.save_total_limit, "seed": cfg.seed, "data_seed": cfg.seed,
        "use_cpu": cfg.device == "cpu", "report_to": "none", "disable_tqdm": True, "remove_unused_columns": False,
        "dataloader_num_workers": 0, "average_tokens_across_devices": True, "deepspeed": deepspeed,
        "ddp_backend": "gloo" if cfg.device == "cpu" and world > 1 else None, "save_only_model": False,
        # Every LoRA weight takes part in every forward pass. Left unset, Trainer asks DDP to look for unused
        # parameters whenever the model is not a bare PreTrainedModel (a PeftModel is not), and DDP then
        # refuses gradient checkpointing ("marked ready twice"): a run under torchrun without DeepSpeed.
        "ddp_find_unused_parameters": False,
    }
