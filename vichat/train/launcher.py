"""Command lines that start a run: the DeepSpeed launcher for several GPUs or nodes.

``deepspeed --num_gpus N --no_local_rank --module vichat.train.launch PRESET --flag value ...``:
every process gets the preset plus the flags whose values differ from it, so the workers rebuild
exactly the parent's :class:`TrainConfig`. (DeepSpeed's launcher spells "run a module"
``--module``; it has no ``-m``.) ``--no_local_rank``: workers read ``LOCAL_RANK`` from the
environment instead of a ``--local_rank`` argument.
"""

from __future__ import annotations

from typing import Any

from .config import FIELDS, TrainConfig, field_default, field_kind
from .presets import get_preset

WORKER_MODULE = "vichat.train.launch"
_LAUNCHER_ONLY = ("preset", "hostfile")


def flag_name(name: str) -> str:
    """``lora_r`` -> ``--lora-r``."""
    return "--" + name.replace("_", "-")


def _render(name: str, value: Any) -> list[str]:
    kind = field_kind(name)
    if kind == "bool":
        return [flag_name(name) if value else "--no-" + name.replace("_", "-")]
    if kind == "tuple":
        return [flag_name(name), ",".join(value)]
    return [flag_name(name), str(value)]


def config_to_args(cfg: TrainConfig) -> list[str]:
    """``[PRESET] + flags`` that rebuild ``cfg`` through `vichat train` (flags only where it differs)."""
    baseline: dict[str, Any] = {n: field_default(n) for n in FIELDS}
    if cfg.preset:
        baseline.update(get_preset(cfg.preset).values)
    args = [cfg.preset] if cfg.preset else []
    for name in FIELDS:
        value = getattr(cfg, name)
        if name in _LAUNCHER_ONLY or value is None:
            continue
        base = baseline.get(name)
        if field_kind(name) == "tuple" and base is not None:
            base = tuple(base)
        if name == "gpus" or value != base:
            args += _render(name, value)
    return args


def launch_command(cfg: TrainConfig, python: str = "python") -> list[str]:
    """The command that runs ``cfg``: DeepSpeed's launcher when it spans several GPUs or a hostfile,
    else one process (``python -m vichat.train.launch ...``)."""
    if cfg.world_size > 1 or cfg.hostfile:
        cmd = ["deepspeed"]
        if cfg.hostfile:
            cmd += ["--hostfile", cfg.hostfile]
        if cfg.num_nodes > 1:
            cmd += ["--num_nodes", str(cfg.num_nodes)]
        cmd += ["--num_gpus", str(cfg.gpus), "--no_local_rank", "--module", WORKER_MODULE]
    else:
        cmd = [python, "-m", WORKER_MODULE]
    return cmd + config_to_args(cfg)
