"""Running judgments: cache hits first, the rest from worker threads under one request policy.

Workers only call the judge; the main thread alone commits each result to the cache the moment
it arrives, so a kill loses at most the judgments in flight. A judge that says no request can
succeed stops the run; reaching ``--max-cost`` stops sending (in-flight work still lands); Ctrl-C
gives in-flight answers a grace period to land in the cache, then re-raises.
"""

from __future__ import annotations

import inspect
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..records import VichatError
from ..specs import JudgeResult, JudgeSpec
from ..retry import Backoff, Cancelled, RetryableError, call_with_retries
from .cache import JudgmentCache
from .conversation import RequestPolicy
from .cost import Budget, BudgetExceeded, Usage, estimate_messages
from .judge import JudgeSettings, Task, result_payload
from .limiter import RateLimiter


@dataclass
class RunOptions:
    """How a run sends: concurrency, limits, cost cap, retries, cache behaviour."""

    concurrency: int = 16
    rpm: float | None = 500
    tpm: float | None = 300_000
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


def judge_caller(spec: JudgeSpec, settings: JudgeSettings, policy: RequestPolicy) -> Callable[[Task], JudgeResult]:
    """A function judging one task with ``spec``, passing the options its ``judge`` accepts."""
    params = inspect.signature(spec.judge).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    options: dict[str, Any] = {"temperature": settings.temperature, "max_tokens": settings.max_tokens, **settings.options}
    if settings.model:
        options["model"] = settings.model
    if settings.aspects:
        options["aspects"] = True
    unknown = [k for k in options if not takes_any and k not in params]
    if unknown:
        raise VichatError(f"judge {settings.judge!r} takes no option {', '.join(map(repr, unknown))}")
    if takes_any or "policy" in params:
        return lambda t: spec.judge(t.question.text, t.answer1.text, t.answer2.text, t.prompt, policy=policy, **options)

    # A judge that does not take the policy: rate-limit, retry and count the whole call instead.
    def call(t: Task) -> JudgeResult:
        def before() -> None:
            with policy._lock:
                policy.attempts += 1
            if policy.limiter is not None:
                policy.limiter.acquire(0, policy.stop)

        result = call_with_retries(
            lambda: spec.judge(t.question.text, t.answer1.text, t.answer2.text, t.prompt, **options),
            policy.backoff, policy.stop, on_attempt=before,
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
    opts: RunOptions, on_result: Callable[[Task, dict], None] = lambda t, p: None,
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
        limiter=RateLimiter(opts.rpm, opts.tpm) if (opts.rpm or opts.tpm) else None,
        budget=budget, backoff=opts.backoff, stop=threading.Event(), max_tokens=settings.max_tokens,
    )
    if todo:
        _Pool(judge_caller(spec, settings, policy), opts, policy.stop, summary, cache, settings, on_result).run(todo)
    summary.attempts = policy.attempts
    summary.usage = budget.usage
    summary.elapsed = time.monotonic() - start
    return summary


class _Pool:
    """Worker threads that judge, and the main-thread loop that commits their results."""

    def __init__(self, call: Callable[[Task], JudgeResult], opts: RunOptions, stop: threading.Event,
                 summary: RunSummary, cache: JudgmentCache | None, settings: JudgeSettings,
                 on_result: Callable[[Task, dict], None]) -> None:
        self.call, self.opts, self.stop, self.summary = call, opts, stop, summary
        self.cache, self.settings, self.on_result = cache, settings, on_result
        self.halt = threading.Event()  # the cost cap: send nothing new, let in-flight work land
        self.work: queue.Queue = queue.Queue()
        self.done: queue.Queue = queue.Queue()
        self.bar: Any = None

    def _worker(self) -> None:
        while not (self.stop.is_set() or self.halt.is_set()):
            try:
                task = self.work.get_nowait()
            except queue.Empty:
                break
            try:
                self.done.put((task, "ok", result_payload(self.call(task))))
            except BudgetExceeded as exc:
                self.halt.set()
                self.done.put((task, "budget", str(exc)))
            except Cancelled:
                self.done.put((task, "cancelled", "interrupted"))
            except VichatError as exc:  # the judge says nothing can succeed: stop everything
                self.stop.set()
                self.done.put((task, "fatal", exc))
            except RetryableError as exc:
                self.done.put((task, "failed", f"gave up after {self.opts.backoff.max_retries + 1} attempts: {exc}"))
            except Exception as exc:  # noqa: BLE001 - a plugin failure fails this judgment only
                self.done.put((task, "failed", f"{type(exc).__name__}: {exc}"))
        self.done.put((None, "exit", None))

    def run(self, todo: list[Task]) -> None:
        from tqdm.auto import tqdm

        for t in todo:
            self.work.put(t)
        running = min(self.opts.concurrency, len(todo))
        # Daemon threads: Ctrl-C must not wait for a slow request to time out.
        for _ in range(running):
            threading.Thread(target=self._worker, daemon=True, name="vichat-judge").start()
        progress = self.opts.progress
        self.bar = tqdm(total=len(todo), unit="judgment", desc=f"judge ({self.settings.reviewer_id})",
                        dynamic_ncols=True, disable=(not progress) if progress is not None else None)
        fatal: BaseException | None = None
        try:
            while running:
                try:
                    task, kind, payload = self.done.get(timeout=0.2)
                except queue.Empty:
                    continue
                if kind == "exit":
                    running -= 1
                    continue
                fatal = self._absorb(task, kind, payload) or fatal
        except KeyboardInterrupt:
            self.stop.set()
            self._drain(running)
            raise
        finally:
            self.bar.close()
        if fatal is not None:
            raise fatal

    def _absorb(self, task: Task, kind: str, payload: Any) -> BaseException | None:
        if kind == "fatal":
            return payload
        if kind == "budget":
            self.summary.stopped = payload
        if kind in ("budget", "cancelled"):
            return None
        self.bar.update(1)
        if kind == "failed":
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

    def _drain(self, running: int) -> None:
        # Answers already in flight were probably paid for: give them a moment to land in the cache.
        deadline = time.monotonic() + self.opts.grace
        try:
            while running and time.monotonic() < deadline:
                try:
                    task, kind, payload = self.done.get(timeout=0.1)
                except queue.Empty:
                    continue
                if kind == "exit":
                    running -= 1
                elif kind == "ok":
                    self._absorb(task, kind, payload)
        except KeyboardInterrupt:
            pass  # a second Ctrl-C: stop waiting
