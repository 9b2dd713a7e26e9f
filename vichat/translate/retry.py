"""Retries with exponential backoff and full jitter, honouring a server's Retry-After."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Callable, TypeVar

from .errors import RetryableError

T = TypeVar("T")


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
