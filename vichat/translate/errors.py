"""Errors a translator plugin raises so the job knows whether to retry, fail a batch or stop.

The contract (see :class:`vichat.specs.TranslatorSpec`):

- :class:`RetryableError`: transient (HTTP 429, 5xx, timeouts, a garbled answer). The job retries
  with exponential backoff and full jitter, or waits ``retry_after`` seconds when the server said so.
- :class:`FatalTranslatorError`: every further request would fail the same way (bad key, quota
  exhausted). The job stops, keeps what it has cached and reports this one line.
- any other exception: this batch failed; its records go to the failed side file.
"""

from __future__ import annotations

from ..records import VichatError
from ..retry import RetryableError, parse_retry_after  # re-exported: translator plugins raise it

__all__ = [
    "FatalTranslatorError",
    "ProtectionError",
    "RetryableError",
    "TranslationInterrupted",
    "parse_retry_after",
]


class FatalTranslatorError(VichatError):
    """A failure that no retry or other batch can fix; the job stops (cache stays intact)."""


class ProtectionError(ValueError):
    """A protected-span marker came back missing, duplicated, invented or damaged."""


class TranslationInterrupted(KeyboardInterrupt):
    """Ctrl-C during a job: raised after the job cleaned up; ``summary`` says what was done."""

    def __init__(self, summary: object) -> None:
        super().__init__("interrupted")
        self.summary = summary
