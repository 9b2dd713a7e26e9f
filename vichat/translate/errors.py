"""Errors a translator plugin raises so the job knows whether to retry, fail a batch or stop.

The contract (see :class:`vichat.specs.TranslatorSpec`):

- :class:`RetryableError`: transient (HTTP 429, 5xx, timeouts, a garbled answer). The job retries
  with exponential backoff and full jitter, or waits ``retry_after`` seconds when the server said so.
- :class:`FatalTranslatorError`: every further request would fail the same way (bad key, quota
  exhausted). The job stops, keeps what it has cached and reports this one line.
- any other exception: this batch failed; its records go to the failed side file.
"""

from __future__ import annotations

import email.utils
import time

from ..records import VichatError


class RetryableError(Exception):
    """A transient failure; ``retry_after`` is the server's requested wait in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FatalTranslatorError(VichatError):
    """A failure that no retry or other batch can fix; the job stops (cache stays intact)."""


class ProtectionError(ValueError):
    """A protected-span marker came back missing, duplicated, invented or damaged."""


class TranslationInterrupted(KeyboardInterrupt):
    """Ctrl-C during a job: raised after the job cleaned up; ``summary`` says what was done."""

    def __init__(self, summary: object) -> None:
        super().__init__("interrupted")
        self.summary = summary


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())
