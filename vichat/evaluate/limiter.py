"""A requests-per-minute and tokens-per-minute limiter shared by every worker of a judging run.

Two token buckets, as the OpenAI API meters them: each holds up to one minute's allowance and
refills continuously, so a cold start may burst up to the limit and then settles at the rate.
A request takes one request-token and its estimated tokens (prompt plus ``max_tokens``, which the
API counts against the limit before it answers); :meth:`RateLimiter.refund` gives back what the
real usage did not need.

Limits differ by account tier and by model, so a run need not guess them: it starts at
:data:`START_RPM` / :data:`START_TPM` and, in ``adaptive`` mode (the default), adopts the limits
the server announces in its ``x-ratelimit-limit-requests`` / ``x-ratelimit-limit-tokens`` response
headers (OpenAI and most compatible servers send them) from the first answer on.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from ..retry import Cancelled

#: Where a run starts before the server has announced its limits: OpenAI's lowest paid tier for
#: gpt-4, the paper's judge (500 requests and 10,000 tokens per minute). Safe for every account;
#: a higher tier is picked up from the first answer's headers.
START_RPM = 500.0
START_TPM = 10_000.0


class _Bucket:
    def __init__(self, per_minute: float, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.stamp = now

    def resize(self, per_minute: float, now: float) -> None:
        """A new limit; what was already spent stays spent."""
        self.refill(now)
        spent = self.capacity - self.level
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = max(0.0, self.capacity - spent)

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 if it is now)."""
        amount = min(amount, self.capacity)  # a request bigger than a minute's allowance waits for a full bucket
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate


class RateLimiter:
    """Blocks callers until both budgets allow the next request.

    :param rpm: requests per minute (``None`` or 0: unlimited).
    :param tpm: tokens per minute (``None`` or 0: unlimited).
    :param adaptive: adopt the limits the server announces (:meth:`adopt`); off, ``rpm`` and
        ``tpm`` are fixed (the user gave them).
    :param clock: a monotonic clock in seconds (tests pass a fake one).
    """

    def __init__(
        self,
        rpm: float | None = None,
        tpm: float | None = None,
        *,
        adaptive: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        now = clock()
        self.requests = _Bucket(rpm, now) if rpm else None
        self.tokens = _Bucket(tpm, now) if tpm else None
        self.adaptive = adaptive
        self.announced = False  # limits adopted from a server
        self.waited = 0.0
        self._lock = threading.Lock()

    @property
    def limits(self) -> tuple[float | None, float | None]:
        """``(requests, tokens)`` per minute now (None: unlimited)."""
        return (self.requests.capacity if self.requests else None, self.tokens.capacity if self.tokens else None)

    def adopt(self, rpm: float | None, tpm: float | None) -> None:
        """Take the limits a server announced (either may be None: unknown); only in adaptive mode."""
        if not self.adaptive:
            return
        with self._lock:
            now = self.clock()
            for attr, value in (("requests", rpm), ("tokens", tpm)):
                if value is None or value <= 0:
                    continue
                self.announced = True
                bucket = getattr(self, attr)
                if bucket is None:
                    setattr(self, attr, _Bucket(value, now))
                elif bucket.capacity != value:
                    bucket.resize(value, now)

    def try_acquire(self, tokens: float = 0.0) -> float:
        """Take one request and ``tokens`` if both are available now (returns 0.0); otherwise take
        nothing and return the seconds to wait."""
        with self._lock:
            now = self.clock()
            wait = 0.0
            for bucket, amount in ((self.requests, 1.0), (self.tokens, tokens)):
                if bucket is not None:
                    bucket.refill(now)
                    wait = max(wait, bucket.wait_for(amount))
            if wait == 0.0:
                if self.requests is not None:
                    self.requests.level -= 1.0
                if self.tokens is not None:
                    self.tokens.level -= min(tokens, self.tokens.capacity)
            return wait

    def acquire(self, tokens: float = 0.0, stop: threading.Event | None = None) -> float:
        """Wait until a request of ``tokens`` may go; returns the seconds waited.

        ``stop`` (Ctrl-C, a cost cap reached) cuts the wait short with
        :class:`vichat.retry.Cancelled`.
        """
        waited = 0.0
        while True:
            wait = self.try_acquire(tokens)
            if wait == 0.0:
                with self._lock:
                    self.waited += waited
                return waited
            wait = min(wait, 1.0)  # re-check often: other workers refund tokens meanwhile
            if stop is not None:
                if stop.wait(wait):
                    raise Cancelled()
            else:
                time.sleep(wait)
            waited += wait

    def refund(self, tokens: float) -> None:
        """Give back ``tokens`` that were reserved but not used (negative: charge extra)."""
        if self.tokens is None or not tokens:
            return
        with self._lock:
            self.tokens.refill(self.clock())
            self.tokens.level = min(self.tokens.capacity, self.tokens.level + tokens)
