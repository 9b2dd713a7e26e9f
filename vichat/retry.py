"""Retries with exponential backoff and full jitter, honouring a server's Retry-After.

Shared by every job that calls a remote service (translation, judging): a callee raises
:class:`RetryableError` for 429s, 5xx and timeouts, and :func:`call_with_retries` waits and retries.
"""

from __future__ import annotations

import email.utils
import random
import threading
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")


class RetryableError(Exception):
    """A transient failure; ``retry_after`` is the server's requested wait in seconds, if any."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


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


@dataclass(frozen=True)
class Backoff:
    """How long to wait between attempts.

    Attempt ``n`` (0-based) waits a uniform random time in ``[0, min(cap, base * 2**n)]`` ("full
    jitter": concurrent workers hitting one rate limit spread out instead of retrying in step).
    A server's ``Retry-After`` wins, up to ``max_retry_after`` seconds.
    """

    base: float = 0.5
    cap: float = 30.0
    max_retries: int = 6
    max_retry_after: float = 300.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        return random.uniform(0.0, min(self.cap, self.base * (2**attempt)))


class Cancelled(Exception):
    """The job was stopped while this call waited to retry."""


def call_with_retries(
    fn: Callable[[], T],
    backoff: Backoff,
    stop: threading.Event | None = None,
    on_attempt: Callable[[], None] | None = None,
) -> T:
    """Call ``fn`` until it returns, retrying :class:`RetryableError` up to ``backoff.max_retries`` times.

    The last :class:`RetryableError` propagates when retries run out; other exceptions propagate
    at once. ``stop`` cuts a wait short (Ctrl-C) by raising :class:`Cancelled`.
    """
    attempt = 0
    while True:
        if stop is not None and stop.is_set():
            raise Cancelled()
        if on_attempt is not None:
            on_attempt()
        try:
            return fn()
        except RetryableError as exc:
            if attempt >= backoff.max_retries:
                raise
            wait = backoff.delay(attempt, exc.retry_after)
            attempt += 1
            if stop is not None:
                if stop.wait(wait):
                    raise Cancelled() from exc
            elif wait > 0:
                threading.Event().wait(wait)
