"""The DeepSpeed config: train_ds.json with its ``"auto"`` values filled from a :class:`TrainConfig`.

transformers' Trainer fills ``"auto"`` itself (``HfTrainerDeepSpeedConfig``); :func:`fill_deepspeed_config`
does the same from our settings so a custom loop can pass the dict to ``deepspeed.initialize``,
and so the Trainer, given the filled dict, finds no mismatch (the step count uses its formula).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from ..records import VichatError

REPO_ROOT = Path(__file__).resolve().parents[2]

#: The same content as the repository's train_ds.json (a test keeps them equal), for installs without it.
DEFAULT_DS_CONFIG: dict[str, Any] = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "steps_per_print": 50,
    "wall_clock_breakdown": False,
    "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
             "hysteresis": 2, "min_loss_scale": 1},
    "bf16": {"enabled": "auto"},
    "optimizer": {"type": "AdamW", "params": {"lr": "auto", "betas": "auto", "eps": "auto",
                                              "weight_decay": "auto", "torch_adam": True}},
    "scheduler": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": "auto", "warmup_max_lr": "auto",
                                                      "warmup_num_steps": "auto", "total_num_steps": "auto",
                                                      "warmup_type": "linear"}},
    "zero_optimization": {"stage": 2, "overlap_comm": True, "contiguous_gradients": True, "reduce_scatter": True,
                          "reduce_bucket_size": "auto", "allgather_partitions": True,
                          "allgather_bucket_size": 200000000},
}

_SCHEDULERS = {"linear": "WarmupDecayLR", "constant": "WarmupLR", "cosine": "WarmupCosineLR"}


def find_deepspeed_config(path: str | Path) -> Path | None:
    """``path`` as given, else relative to the repository root; None when neither exists."""
    p = Path(path)
    for candidate in (p, REPO_ROOT / p):
        if candidate.is_file():
            return candidate
    return None


def load_deepspeed_config(path: str | Path) -> dict[str, Any]:
    """The JSON at ``path``; the built-in copy when ``train_ds.json`` is not found (an installed package)."""
    found = find_deepspeed_config(path)
    if found is None:
        if Path(path).name == "train_ds.json":
            return copy.deepcopy(DEFAULT_DS_CONFIG)
        raise VichatError(f"--deepspeed-config {path}: file not found")
    try:
        return json.loads(found.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise VichatError(f"{found}:{exc.lineno}: not valid JSON: {exc.msg}") from None


def _autos(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _autos(v, f"{prefix}.{key}" if prefix else key)]
    return [prefix] if node == "auto" else []


def _fill(node: dict[str, Any], key: str, value: Any) -> None:
    if node.get(key) == "auto":
        node[key] = value


def fill_deepspeed_config(
    path: str | Path,
    p: Any,
    spec: Any,
    *,
    total_steps: int | None = None,
    client_optimizer: bool = False,
) -> dict[str, Any]:
    """The DeepSpeed config at ``path`` with every ``"auto"`` resolved from the dry-run plan ``p``
    (:func:`vichat.train.plan.plan` of the run's config, for base model ``spec``).

    The plan's config decides the ZeRO stage (it overrides the file's). The step count for the
    scheduler is ``total_steps`` if given, else the plan's. ``client_optimizer=True``: the caller
    passes its own optimizer and scheduler (DeepSpeed refuses both at once), so those blocks are
    dropped. Raises :class:`VichatError` if an ``"auto"`` is left that it cannot fill.
    """
    rc, batch = p.config, p.batch
    steps = total_steps if total_steps is not None else p.total_steps
    if steps is None:
        raise VichatError("cannot fill the scheduler's total_num_steps: the number of training records is unknown "
                          f"for data {rc.data!r}; plan with n_train_records, or pass total_steps")
    ds = load_deepspeed_config(path)
    _fill(ds, "train_batch_size", batch.total)
    _fill(ds, "train_micro_batch_size_per_gpu", batch.micro)
    _fill(ds, "gradient_accumulation_steps", batch.accumulation)
    _fill(ds, "gradient_clipping", rc.max_grad_norm)
    for key, on in (("fp16", rc.compute_dtype == "fp16"), ("bf16", rc.compute_dtype == "bf16")):
        ds.setdefault(key, {})
        _fill(ds[key], "enabled", on)

    if client_optimizer:
        ds.pop("optimizer", None)
        ds.pop("scheduler", None)
        ds["zero_allow_untested_optimizer"] = True
    if rc.optimizer in ("adamw_torch", "adamw_torch_fused") and "optimizer" in ds:
        params = ds["optimizer"].setdefault("params", {})
        for key, value in (("lr", rc.learning_rate), ("betas", [rc.adam_beta1, rc.adam_beta2]),
                           ("eps", rc.adam_epsilon), ("weight_decay", rc.weight_decay)):
            _fill(params, key, value)
    elif "optimizer" in ds:  # an 8-bit optimizer is built by the trainer, not DeepSpeed
        del ds["optimizer"]
        ds["zero_allow_untested_optimizer"] = True

    sched = ds.get("scheduler")
    if sched is not None and sched.get("type") in _SCHEDULERS.values():
        sched["type"] = _SCHEDULERS[rc.lr_scheduler]
        params = sched.setdefault("params", {})
        warmup = max(1, rc.warmup_steps)  # deepspeed >= 0.19.6 rejects 0 warm-up steps
        if rc.lr_scheduler == "cosine":
            for stale in ("warmup_min_lr", "warmup_max_lr"):
                params.pop(stale, None)
            params.update(total_num_steps=steps, warmup_num_steps=warmup, warmup_min_ratio=0.0, cos_min_ratio=0.0)
        else:
            for key, value in (("warmup_min_lr", 0), ("warmup_max_lr", rc.learning_rate),
                               ("warmup_num_steps", warmup), ("total_num_steps", steps)):
                _fill(params, key, value)
            if rc.lr_scheduler == "constant":
                params.pop("total_num_steps", None)

    zero = ds.setdefault("zero_optimization", {})
    zero["stage"] = rc.zero_stage
    h = spec.architecture.hidden_size
    _fill(zero, "reduce_bucket_size", h * h)
    _fill(zero, "stage3_prefetch_bucket_size", int(0.9 * h * h))
    _fill(zero, "stage3_param_persistence_threshold", 10 * h)
    if rc.zero_stage == 3:
        zero.setdefault("stage3_gather_16bit_weights_on_model_save", True)  # peft #2892: else empty adapters

    left = _autos(ds)
    if left:
        raise VichatError(f"{path}: cannot fill 'auto' for {', '.join(left)}; give these keys explicit values")
    return ds
