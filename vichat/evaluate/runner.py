"""Running judgments: cache hits first, the rest from worker threads under one request policy.

Workers only call the judge; the main thread alone commits each result to the cache the moment
it arrives, so a kill loses at most the judgments in flight. A judge that says no request can
succeed stops the run; reaching ``--max-cost`` stops sending (in-flight work still lands); Ctrl-C
gives in-flight answers a grace period to land in the cache, then re-raises.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..jobs import CANCELLED, FAILED, FATAL, HALT, Outcome, run_pool
from ..records import VichatError
from ..retry import Backoff, call_with_retries
from ..specs import JudgeResult, JudgeSpec
from .cache import JudgmentCache
from .conversation import RequestPolicy
from .cost import Budget, Usage, estimate_messages
from .judge import JudgeSettings, Task, result_payload
from .limiter import START_RPM, START_TPM, RateLimiter


@dataclass
class RunOptions:
    """How a run sends: concurrency, limits, cost cap, retries, cache behaviour."""

    concurrency: int = 16
    rpm: float | None = START_RPM
    tpm: float | None = START_TPM
    adaptive_limits: bool = True  # adopt the limits the server's headers announce
    max_cost: float | None = None
    price: tuple[float, float] | None = None
    backoff: Backoff = field(default_factory=lambda: Backoff(base=1.0, cap=60.0, max_retries=6))
    retry_failed: bool = False
    progress: bool | None = None
    grace: float = 30.0


@dataclass
class RunSummary:
    """What a run did; ``results`` maps task keys to payloads (fresh or cached)."""

    results: dict[str, dict] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    cached: int = 0
    judged: int = 0
    attempts: int = 0
    usage: Usage = field(default_factory=Usage)
    elapsed: float = 0.0
    stopped: str | None = None
    limits: tuple[float | None, float | None] = (None, None)  # per minute at the end: requests, tokens
    limits_announced: bool = False  # ... as the server's headers said (not the start values)


def judge_keywords(spec: JudgeSpec, settings: JudgeSettings, registry: Any = None) -> dict[str, Any]:
    """The keywords ``spec.judge`` is called with, as :class:`vichat.specs.JudgeSpec` promises: the
    standard ones and the judge's declared options (the user's values over its defaults); ``policy``
    is added by the caller. An option the judge does not declare is refused here, before any request."""
    unknown = sorted(set(settings.options) - set(spec.options))
    if unknown:
        takes = ", ".join(f"{k} (default {v!r})" for k, v in spec.options.items()) or "none"
        raise VichatError(f"judge {spec.name!r} takes no option {', '.join(map(repr, unknown))}; its options: {takes}")
    return {"model": settings.model or spec.default_model, "temperature": settings.temperature,
            "max_tokens": settings.max_tokens, "aspects": settings.aspects, "registry": registry,
            **spec.options, **settings.options}


def judge_caller(spec: JudgeSpec, settings: JudgeSettings, policy: RequestPolicy,
                 registry: Any = None) -> Callable[[Task], JudgeResult]:
    """A function judging one task with ``spec`` (see :func:`judge_keywords`); a judge that does not
    send its requests through the policy is retried and counted as a whole."""
    options = judge_keywords(spec, settings, registry)
    if spec.uses_policy:
        return lambda t: spec.judge(t.question.text, t.answer1.text, t.answer2.text, t.prompt, policy=policy, **options)

    # A judge that sends no requests of its own through the policy: vichat retries and counts the whole call.
    def call(t: Task) -> JudgeResult:
        result = call_with_retries(
            lambda: spec.judge(t.question.text, t.answer1.text, t.answer2.text, t.prompt, policy=None, **options),
            policy.backoff, policy.stop, on_attempt=policy.count_attempt,
        )
        if policy.budget is not None:
            # One answered call, as its review records it; token counts only if the judge said.
            estimate = estimate_messages(t.prompt.messages(t.question.text, t.answer1.text, t.answer2.text))
            policy.budget.settle(0.0, getattr(result, "prompt_tokens", None) or None,
                                 getattr(result, "completion_tokens", None), estimate,
                                 requests=getattr(result, "requests", 0) or 1)
        return result

    return call


def run_tasks(
    spec: JudgeSpec, settings: JudgeSettings, tasks: list[Task], cache: JudgmentCache | None,
    opts: RunOptions, on_result: Callable[[Task, dict], None] = lambda t, p: None, *, registry: Any = None,
) -> RunSummary:
    """Judge ``tasks`` (see the module docstring); identical tasks are judged once."""
    start = time.monotonic()
    summary = RunSummary()
    unique: dict[str, Task] = {}
    for t in tasks:
        unique.setdefault(t.key, t)  # identical answers in both orders are one judgment
    if cache is not None:
        summary.results.update(cache.lookup(unique, include_failed=not opts.retry_failed))
        summary.cached = len(summary.results)
    todo = [t for k, t in unique.items() if k not in summary.results]
    budget = Budget(opts.price, opts.max_cost)
    policy = RequestPolicy(
        limiter=RateLimiter(opts.rpm, opts.tpm, adaptive=opts.adaptive_limits) if (opts.rpm or opts.tpm) else None,
        budget=budget, backoff=opts.backoff, stop=threading.Event(), max_tokens=settings.max_tokens,
    )
    if todo:
        _Pool(judge_caller(spec, settings, policy, registry), opts, policy.stop, summary, cache, settings, on_result).run(todo)
    summary.attempts = policy.attempts
    if policy.limiter is not None:
        summary.limits = policy.limiter.limits
        summary.limits_announced = policy.limiter.announced
    summary.usage = budget.usage
    summary.elapsed = time.monotonic() - start
    return summary


class _Pool:
    """Judge ``todo`` on worker threads (:func:`vichat.jobs.run_pool`); commit each result here."""

    def __init__(self, call: Callable[[Task], JudgeResult], opts: RunOptions, stop: threading.Event,
                 summary: RunSummary, cache: JudgmentCache | None, settings: JudgeSettings,
                 on_result: Callable[[Task, dict], None]) -> None:
        self.call, self.opts, self.stop, self.summary = call, opts, stop, summary
        self.cache, self.settings, self.on_result = cache, settings, on_result
        self.bar: Any = None

    def run(self, todo: list[Task]) -> None:
        from tqdm.auto import tqdm

        progress = self.opts.progress
        self.bar = tqdm(total=len(todo), unit="judgment", desc=f"judge ({self.settings.reviewer_id})",
                        dynamic_ncols=True, disable=(not progress) if progress is not None else None)
        try:
            run_pool(todo, lambda task: result_payload(self.call(task)), self._absorb,
                     concurrency=self.opts.concurrency, stop=self.stop,
                     attempts=self.opts.backoff.max_retries + 1, grace=self.opts.grace, name="vichat-judge")
        finally:
            self.bar.close()

    def _absorb(self, outcome: Outcome) -> BaseException | None:
        kind, task, payload = outcome.kind, outcome.item, outcome.payload
        if kind == FATAL:
            return payload
        if kind == HALT:
            self.summary.stopped = payload
        if kind in (HALT, CANCELLED):
            return None
        self.bar.update(1)
        if kind == FAILED:
            self.summary.errors[task.key] = payload  # never cached: a rerun asks again
            self.bar.set_postfix(failed=len(self.summary.errors), refresh=False)
            return None
        if self.cache is not None:  # committed before anything relies on it: a kill loses nothing finished
            self.cache.store(task.key, judge=self.settings.judge, model=self.settings.model, prompt=task.prompt.key,
                             ok=payload["score"] is not None, payload=payload)
        self.summary.results[task.key] = payload
        self.summary.judged += 1
        self.on_result(task, payload)
        return None
