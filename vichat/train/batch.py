"""Batch arithmetic: micro-batch x gradient accumulation x world size = total batch."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..records import VichatError


@dataclass(frozen=True)
class Batch:
    """How the total batch is split: ``micro * accumulation * world == total``."""

    total: int
    micro: int
    accumulation: int
    world: int

    @property
    def per_gpu(self) -> int:
        return self.micro * self.accumulation


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def solve_batch(
    total: int,
    world: int,
    micro: int | None = None,
    accumulation: int | None = None,
    cap: int | None = None,
) -> Batch:
    """Split ``total`` over ``world`` processes.

    With neither ``micro`` nor ``accumulation`` given, the micro-batch is the largest divisor of
    ``total / world`` that is at most ``cap`` (the memory-based limit; at least 1). Raises
    :class:`VichatError` explaining the options when the numbers cannot multiply out.
    """
    if total < 1 or world < 1:
        raise VichatError(f"total batch ({total}) and world size ({world}) must be positive")
    if total % world:
        lo, hi = total // world * world, math.ceil(total / world) * world
        sizes = " or ".join(str(x) for x in dict.fromkeys(v for v in (lo, hi) if v > 0))
        gpus = ", ".join(str(d) for d in _divisors(total) if d <= max(2 * world, 8))
        raise VichatError(
            f"total batch size {total} is not divisible by the world size {world} (GPUs x nodes), so every "
            f"GPU cannot get the same share. Options: --total-batch-size {sizes} (multiples of {world}), "
            f"or a GPU count that divides {total} ({gpus})."
        )
    per_gpu = total // world
    divs = ", ".join(map(str, _divisors(per_gpu)))
    if micro is not None and micro < 1 or accumulation is not None and accumulation < 1:
        raise VichatError("--micro-batch-size and --gradient-accumulation must be at least 1")
    if micro is not None and accumulation is not None:
        if micro * accumulation * world != total:
            raise VichatError(
                f"micro-batch {micro} x gradient accumulation {accumulation} x world size {world} = "
                f"{micro * accumulation * world}, not the total batch {total}. Give only one of "
                "--micro-batch-size / --gradient-accumulation and the other is worked out."
            )
        return Batch(total, micro, accumulation, world)
    if micro is not None:
        if per_gpu % micro:
            raise VichatError(
                f"micro-batch {micro} does not divide the per-GPU batch {per_gpu} (= total {total} / world "
                f"size {world}). Use one of: {divs}."
            )
        return Batch(total, micro, per_gpu // micro, world)
    if accumulation is not None:
        if per_gpu % accumulation:
            raise VichatError(
                f"gradient accumulation {accumulation} does not divide the per-GPU batch {per_gpu} "
                f"(= total {total} / world size {world}). Use one of: {divs}."
            )
        return Batch(total, per_gpu // accumulation, accumulation, world)
    limit = per_gpu if cap is None else max(1, min(cap, per_gpu))
    best = max(d for d in _divisors(per_gpu) if d <= limit)
    return Batch(total, best, per_gpu // best, world)


def steps_per_epoch(records: int, batch: Batch) -> int:
    """Optimizer steps per epoch, as transformers' Trainer counts them (last partial step included)."""
    per_rank_batches = math.ceil(records / (batch.micro * batch.world))
    return max(1, math.ceil(per_rank_batches / batch.accumulation))


def total_steps(records: int, batch: Batch, epochs: float) -> int:
    """Optimizer steps of the whole run (``ceil(epochs * steps_per_epoch)``)."""
    return math.ceil(epochs * steps_per_epoch(records, batch))
