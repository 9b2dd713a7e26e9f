"""What every part of the tiny build shares: its version, settings, folder layout, atomic writes
and progress reporting (kept apart from the build itself, which imports the stages that use them)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..records import VichatError

#: Bump when a change to this code changes what a build produces: older caches are then ignored.
TINY_VERSION = "3"
ADAPTERS = ("tiny-chat", "tiny-doctor")
#: The build limit the issue sets for the default settings on 2 CPU cores.
LIMIT_SECONDS = 600

#: ``progress(stage, fraction, message)``: ``fraction`` is of the whole build (0 → 1), ``stage`` is
#: ``plan``, ``tokenizer``, ``base``, ``eval``, ``adapter:<name>``, ``heldout-eval`` or ``done``.
Progress = Callable[[str, float, str], None]


@dataclass(frozen=True)
class TinyConfig:
    """Every setting that changes what a build produces (all of them are in the cache key)."""

    vocab_size: int = 4000
    n_layer: int = 4
    hidden_size: int = 256
    n_head: int = 4
    seq_len: int = 256
    batch_size: int = 8
    steps: int = 200
    minutes: float | None = None  # train the base for this long instead of ``steps`` (machine-dependent)
    max_steps: int = 100_000  # cap for ``minutes``
    dropout: float = 0.1  # hidden and attention dropout (seeded; the checkpoint keeps the RNG state)
    learning_rate: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    holdout: float = 0.05
    max_train_chars: int = 4_000_000  # bigger corpora are subsampled: the step budget sees ~2M chars
    max_heldout_chars: int = 200_000
    min_frequency: int = 2
    tokenizer_max_texts: int = 50_000
    checkpoint_every: int = 100
    log_every: int = 25
    #: TrainConfig settings on top of the tiny-chat / tiny-doctor presets. The presets' paper-like LoRA
    #: (r 8 on query_key_value, lr 3e-4, 2 epochs, max length 256) barely moves a from-scratch base in a
    #: few dozen steps; these teach the template, the style and when to stop (docs/tiny.md has the
    #: measurements). max_length 512 keeps every bundled record whole, so each trains its EOS. Batches
    #: of 8 give twice the optimizer steps for the same tokens (lower validation loss, no more time).
    adapter_overrides: tuple[tuple[str, Any], ...] = (
        ("max_length", 512), ("lora_r", 16), ("lora_alpha", 32), ("learning_rate", 3e-3), ("epochs", 6),
        ("total_batch_size", 8),
        ("lora_targets", ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")))

    def __post_init__(self) -> None:
        if self.hidden_size % self.n_head:
            raise VichatError(f"tiny config: hidden_size {self.hidden_size} is not divisible by n_head {self.n_head}")
        if not 0 < self.holdout < 0.5:
            raise VichatError(f"tiny config: holdout {self.holdout} must be between 0 and 0.5")
        if self.steps < 1 or self.batch_size < 1 or self.seq_len < 8:
            raise VichatError("tiny config: steps and batch_size must be positive and seq_len at least 8")
        if self.minutes is not None and self.minutes <= 0:
            raise VichatError(f"--minutes {self.minutes}: must be positive")

    def key_dict(self) -> dict[str, Any]:
        """The settings as plain JSON (for the cache key and the report)."""
        d = asdict(self)
        d["adapter_overrides"] = [[k, list(v) if isinstance(v, tuple) else v] for k, v in self.adapter_overrides]
        if self.minutes is not None:
            d["steps"] = None  # the step count is then decided by the clock, not by this setting
        return d


@dataclass(frozen=True)
class TinyPaths:
    """Where one build's stages live."""

    root: Path

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def base(self) -> Path:
        return self.root / "base"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def eval(self) -> Path:
        """The held-out evaluation of the adapters against the base (written when both are built)."""
        return self.root / "eval.json"

    @property
    def work(self) -> Path:
        """Resumable in-progress state (base checkpoint, prepared data, trainer output)."""
        return self.root / ".work"

    def adapter(self, name: str) -> Path:
        return self.root / "adapters" / name

    @property
    def adapters(self) -> dict[str, Path]:
        return {name: self.adapter(name) for name in ADAPTERS}

    def is_complete(self, adapters: Sequence[str] = ADAPTERS) -> bool:
        """The report exists and every stage it needs is in place."""
        return (self.report.exists() and (self.base / "config.json").exists()
                and all((self.adapter(a) / "adapter_config.json").exists() for a in adapters))


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _stage(final: Path) -> Iterator[Path]:
    """A temporary sibling of ``final`` to write a stage into; renamed to ``final`` on success and
    removed on any failure or interruption, so ``final`` is either absent or complete."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():  # --force: the old stage goes only once the new one is complete
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _Reporter:
    """Turns per-stage progress into whole-build fractions for the ``progress`` hook."""

    def __init__(self, estimates: dict[str, float], progress: Progress | None) -> None:
        self.est, self.progress = estimates, progress
        self.total = sum(estimates.values()) or 1.0
        self.done: set[str] = set()

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        if self.progress is None:
            return
        before = sum(v for k, v in self.est.items() if k in self.done)
        overall = (before + self.est.get(stage, 0.0) * min(1.0, max(0.0, fraction))) / self.total
        self.progress(stage, min(1.0, overall), message)

    def finish(self, stage: str, message: str) -> None:
        self(stage, 1.0, message)
        self.done.add(stage)


