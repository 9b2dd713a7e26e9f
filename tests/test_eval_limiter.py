"""The rate limiter's buckets and the cost budget, on a fake clock."""

import threading

import pytest

from vichat.evaluate.cost import Budget, BudgetExceeded, estimate_tokens, price_for
from vichat.evaluate.limiter import RateLimiter
from vichat.records import VichatError
from vichat.retry import Cancelled


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_requests_per_minute_burst_then_rate():
    clock = Clock()
    lim = RateLimiter(rpm=60, clock=clock)
    assert all(lim.try_acquire() == 0.0 for _ in range(60))  # a full minute's allowance at start
    assert lim.try_acquire() == pytest.approx(1.0)  # then one per second
    clock.t += 0.5
    assert lim.try_acquire() == pytest.approx(0.5)
    clock.t += 0.5
    assert lim.try_acquire() == 0.0


def test_tokens_per_minute_and_refund():
    clock = Clock()
    lim = RateLimiter(tpm=6000, clock=clock)
    assert lim.try_acquire(5000) == 0.0
    assert lim.try_acquire(2000) == pytest.approx(10.0)  # 1000 missing at 100 tokens/s
    lim.refund(4000)  # the request used 1000 of its 5000
    assert lim.try_acquire(2000) == 0.0
    assert lim.try_acquire(10**6) > 0  # bigger than a minute: waits for a full bucket, not forever
    clock.t += 60
    assert lim.try_acquire(10**6) == 0.0


def test_acquire_blocks_and_stop_cancels():
    lim = RateLimiter(rpm=600)  # 10 per second, real clock
    for _ in range(600):
        lim.try_acquire()
    stop = threading.Event()
    assert 0.05 <= lim.acquire(stop=stop) < 0.5
    stop.set()
    lim.try_acquire()
    with pytest.raises(Cancelled):
        lim.acquire(stop=stop)


def test_budget_caps_worst_case_and_counts_real_usage():
    b = Budget((10.0, 30.0), max_cost=0.1)  # $ per million tokens
    r1 = b.reserve(1000, 1000)  # worst case $0.04
    r2 = b.reserve(1000, 1000)
    with pytest.raises(BudgetExceeded, match="--max-cost"):
        b.reserve(1000, 1000)  # 0.12 > 0.1 with two in flight
    b.settle(r1, 900, 100, estimate=1000)  # really cost $0.012
    b.release(r2)
    assert b.usage.requests == 1 and b.usage.prompt_tokens == 900 and b.usage.cost == pytest.approx(0.012)
    b.reserve(1000, 1000)
    with pytest.raises(VichatError, match="--price-in"):
        Budget(None, max_cost=1.0)


def test_prices_and_estimates():
    assert price_for("gpt-4") == (30.0, 60.0) and price_for("gpt-4-0613") == (30.0, 60.0)
    assert price_for("gpt-4o-mini-2024-07-18") == (0.15, 0.60) and price_for("llama3") is None
    assert estimate_tokens("hello world") == 4 and estimate_tokens("Tiếng Việt") > estimate_tokens("Tieng Viet")


def test_adaptive_limiter_adopts_announced_limits_and_keeps_what_was_spent():
    from vichat.evaluate.limiter import RateLimiter

    now = [0.0]
    limiter = RateLimiter(500, 10_000, adaptive=True, clock=lambda: now[0])
    assert limiter.try_acquire(9_000) == 0.0  # 1,000 tokens left of a 10,000 minute
    assert limiter.try_acquire(5_000) > 0
    limiter.adopt(10_000, 2_000_000)
    assert limiter.limits == (10_000, 2_000_000) and limiter.announced
    assert limiter.try_acquire(5_000) == 0.0  # what was spent stays spent, the rest is the new allowance
    limiter.adopt(None, 1_000)  # a smaller announced limit: 14,000 already spent, so it waits
    assert limiter.limits == (10_000, 1_000) and limiter.try_acquire(10) > 0
    fixed = RateLimiter(60, 0, clock=lambda: now[0])  # the user's numbers: never replaced
    fixed.adopt(10_000, 2_000_000)
    assert fixed.limits == (60, None) and not fixed.announced
