"""The process group of a multi-process run, and the DeepSpeed engine around the LoRA model.

A run is multi-process when the launcher set ``WORLD_SIZE > 1`` (torchrun or the deepspeed
launcher). Then DeepSpeed initialises the process group (NCCL on GPUs, gloo on CPU) and wraps the
model; otherwise the loop is plain torch and nothing here does anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..records import VichatError


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over all processes (float64, so token counts stay exact)."""
        if not self.distributed:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().tolist()


def env_from_environment() -> DistEnv:
    """Rank and world size from the launcher's environment variables (1 process when unset)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return DistEnv(rank=rank, world=world, local_rank=local)


def init_distributed(device: str) -> DistEnv:
    """Start the process group when the launcher asked for several processes."""
    env = env_from_environment()
    if not env.distributed:
        return env
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        import torch

        torch.cuda.set_device(env.local_rank)
    return env


def device_for(device: str, env: DistEnv) -> str:
    """``cuda:<local rank>`` or ``cpu``."""
    return f"cuda:{env.local_rank}" if device == "cuda" else "cpu"


def deepspeed_config(ds: dict[str, Any], *, micro: int, accumulation: int, world: int, optimizer_is_torch: bool) -> dict[str, Any]:
    """Adjust the filled train_ds.json for this loop.

    - The batch numbers are this run's (the config was filled for the configured GPU count; a CPU
      run under torchrun has another world size).
    - ``optimizer`` / ``scheduler`` are dropped: the loop passes its own AdamW and warm-up/decay
      schedule, so one-process and DeepSpeed runs follow the same schedule and resume the same way.
    - ``managed_gradient_accumulation: false``: each ``engine.step()`` is an optimizer step, so the
      last, shorter step of an epoch needs no padding to a full accumulation count.
    """
    ds = dict(ds)
    ds.pop("optimizer", None)
    ds.pop("scheduler", None)
    ds["train_micro_batch_size_per_gpu"] = micro
    ds["gradient_accumulation_steps"] = accumulation
    ds["train_batch_size"] = micro * accumulation * world
    ds["managed_gradient_accumulation"] = False
    ds["steps_per_print"] = 10**9  # the loop logs; DeepSpeed's own prints would interleave with the bar
    zero = dict(ds.get("zero_optimization") or {})
    if zero.get("stage", 0) < 2:
        zero["overlap_comm"] = False  # DeepSpeed allows overlap_comm with unmanaged accumulation only at stage 2
    ds["zero_optimization"] = zero
    if not optimizer_is_torch:
        ds["zero_allow_untested_optimizer"] = True  # bitsandbytes 8-bit AdamW
    return ds


def make_engine(model: Any, optimizer: Any, scheduler: Any, ds_config: dict[str, Any]) -> Any:
    """``deepspeed.initialize`` with our optimizer and scheduler; returns the engine."""
    import deepspeed

    try:
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=ds_config,
        )
    except AssertionError as exc:  # DeepSpeed reports config problems as bare assertions
        raise VichatError(f"DeepSpeed refused the configuration: {exc}") from exc
    return engine
