"""What a run reports while it runs: a progress bar, ``training_log.jsonl`` and TensorBoard.

Only the main process (rank 0) writes; the others get a logger that does nothing. On resume the
log file is rewritten from the checkpoint's copy of the log, and TensorBoard purges the events
after the resumed step, so neither shows the steps the killed run did after its last checkpoint.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG_FILE = "training_log.jsonl"
TB_DIR = "runs"


@dataclass
class LogWindow:
    """The steps since the last log line: their loss is averaged per response token."""

    loss_x_tokens: float = 0.0
    label_tokens: int = 0
    tokens: int = 0
    seconds: float = 0.0
    grad_norm: float = 0.0
    steps: int = 0

    def add(self, loss: float, label_tokens: int, tokens: int, seconds: float, grad_norm: float | None) -> None:
        self.loss_x_tokens += loss * label_tokens
        self.label_tokens += label_tokens
        self.tokens += tokens
        self.seconds += seconds
        self.grad_norm += grad_norm or 0.0
        self.steps += 1

    def entry(self) -> dict[str, float]:
        """``loss`` (per response token), mean ``grad_norm`` and useful ``tokens_per_s`` of the window."""
        return {
            "loss": self.loss_x_tokens / max(1, self.label_tokens),
            "grad_norm": self.grad_norm / max(1, self.steps),
            "tokens_per_s": self.tokens / self.seconds if self.seconds else 0.0,
        }


class RunLogger:
    """Progress bar (loss, tokens/s, ETA), JSON lines and TensorBoard scalars for one run."""

    def __init__(
        self,
        output_dir: Path,
        *,
        enabled: bool,
        total_steps: int,
        initial_step: int,
        history: list[dict[str, Any]],
        show_bar: bool = True,
    ) -> None:
        self.enabled = enabled
        self.bar = None
        self.writer = None
        self.path = output_dir / LOG_FILE
        if not enabled:
            return
        from tqdm.auto import tqdm

        # Rewrite the file from the (checkpointed) history: lines of a killed run's lost steps go.
        with self.path.open("w", encoding="utf-8") as fh:
            for entry in history:
                fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output_dir / TB_DIR), purge_step=initial_step or None)
        except ImportError:  # tensorboard is a dependency, but a bare torch install may lack it
            self.say("warning: tensorboard is not installed; no TensorBoard logs")
        self.bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True,
                        disable=not show_bar, file=sys.stderr, desc="training")
        self._window_start = time.perf_counter()
        self._window_tokens = 0

    def say(self, message: str) -> None:
        """A line for people that does not break the progress bar."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def step_done(self, tokens: int, loss: float) -> None:
        """Advance the bar; its postfix shows the loss and recent useful tokens per second."""
        if not self.enabled or self.bar is None:
            return
        self._window_tokens += tokens
        elapsed = time.perf_counter() - self._window_start
        rate = self._window_tokens / elapsed if elapsed > 0 else 0.0
        self.bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{rate:,.0f}", refresh=False)
        self.bar.update(1)
        if elapsed > 30:  # a sliding-ish window: the rate follows changes in sequence length
            self._window_start, self._window_tokens = time.perf_counter(), 0

    def log(self, entry: dict[str, Any]) -> None:
        """Append ``entry`` to the JSON lines log and its numbers to TensorBoard."""
        if not self.enabled:
            return
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        if self.writer is not None:
            step = int(entry["step"])
            for key, value in entry.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    group = "eval" if key.startswith("val_") else "train"
                    self.writer.add_scalar(f"{group}/{key}", value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
