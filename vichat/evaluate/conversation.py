"""The judging conversation every judge plugin shares: ask, parse, re-ask once, optionally ask for
aspect scores; each request through a :class:`RequestPolicy` (rate limit, cost cap, retries).

A judge plugin only has to say how one chat request is sent::

    def judge(question, answer1, answer2, prompt, *, policy=None, aspects=False, **options):
        def send(messages) -> Reply: ...            # one HTTP call, or one local generate()
        return converse(send, question, answer1, answer2, prompt, policy=policy, aspects=aspects)

``send`` raises :class:`vichat.translate.errors.RetryableError` (with ``retry_after`` when the
server said so) for 429, 5xx and timeouts, and :class:`FatalJudgeError` when no request can
succeed (bad key, unknown model); anything else fails this judgment only.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..records import VichatError
from ..specs import JudgeResult
from ..retry import Backoff, call_with_retries
from .cost import Budget, estimate_messages
from .limiter import RateLimiter
from .parse import ParsedScores, parse_aspects_json, parse_scores
from .prompts import JudgePrompt

#: Put between a judge's first answer and its answer to the re-ask in the stored review text.
REASK_SEPARATOR = "\n\n[vichat: re-asked for the scores]\n\n"


@dataclass(frozen=True)
class Reply:
    """One chat answer and, when the server reports them, its token counts."""

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    #: ``(requests, tokens)`` per minute the server announced for this model and account (its
    #: ``x-ratelimit-limit-*`` headers); the run's limiter adopts them. None: not announced.
    limits: tuple[float | None, float | None] | None = None


Send = Callable[[list[dict]], Reply]


class FatalJudgeError(VichatError):
    """No request can succeed (rejected key, unknown model, no quota): the run stops; finished
    judgments stay cached."""


@dataclass(frozen=True)
class Judgment(JudgeResult):
    """A :class:`JudgeResult` with how it was obtained (kept in reviews; all optional)."""

    method: str = ""
    reasked: bool = False
    aspects_raw: str = ""
    aspects_error: str | None = None
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class RequestPolicy:
    """How each request of a run goes out: limiter, budget, backoff, a stop event; thread-safe.

    ``attempts`` counts every HTTP attempt (retries included); the budget counts answered ones.
    """

    limiter: RateLimiter | None = None
    budget: Budget | None = None
    backoff: Backoff = field(default_factory=Backoff)
    stop: threading.Event | None = None
    max_tokens: int = 1024
    attempts: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count_attempt(self, tokens: float = 0.0) -> None:
        """Count one attempt and wait until the limiter lets a request of ``tokens`` go."""
        with self._lock:
            self.attempts += 1
        if self.limiter is not None:
            self.limiter.acquire(tokens, self.stop)

    def send(self, send: Send, messages: list[dict]) -> Reply:
        """Send ``messages`` through ``send`` under this policy; returns the reply."""
        estimate = estimate_messages(messages)
        worst = estimate + self.max_tokens
        reserved = self.budget.reserve(estimate, self.max_tokens) if self.budget is not None else 0.0

        def before_attempt() -> None:
            self.count_attempt(worst)

        try:
            reply = call_with_retries(lambda: send(messages), self.backoff, self.stop, on_attempt=before_attempt)
        except BaseException:
            if self.budget is not None:
                self.budget.release(reserved)
            raise
        used = (reply.prompt_tokens or estimate) + (reply.completion_tokens or 0)
        if self.limiter is not None:
            if reply.limits is not None:
                self.limiter.adopt(*reply.limits)
            self.limiter.refund(worst - used)
        if self.budget is not None:
            self.budget.settle(reserved, reply.prompt_tokens, reply.completion_tokens, estimate)
        return reply


def _follow_up(messages: Sequence[dict], answer: str, request: str) -> list[dict]:
    return [*messages, {"role": "assistant", "content": answer}, {"role": "user", "content": request}]


def converse(
    send: Send,
    question: str,
    answer1: str,
    answer2: str,
    prompt: JudgePrompt,
    *,
    policy: RequestPolicy | None = None,
    aspects: bool = False,
) -> Judgment:
    """Judge one pair: the prompt, one re-ask if no scores can be read, optional aspect scores."""
    policy = policy or RequestPolicy()
    messages = prompt.messages(question, answer1, answer2)
    replies: list[Reply] = []

    def ask(msgs: list[dict]) -> Reply:
        reply = policy.send(send, msgs)
        replies.append(reply)
        return reply

    first = ask(messages)
    parsed = parse_scores(first.text, prompt.output)
    raw, reasked = first.text, False
    if not parsed.ok and prompt.reask:
        # One re-ask in the same conversation: the judge sees its own review and only has to
        # restate the scores, so the verdict stays the one it explained.
        second = ask(_follow_up(messages, first.text, prompt.reask))
        again = parse_scores(second.text, "pair")
        raw, reasked = first.text + REASK_SEPARATOR + second.text, True
        if again.ok:
            parsed = ParsedScores(again.score1, again.score2, method="reask+" + again.method, aspects=parsed.aspects)
        else:
            parsed = ParsedScores(None, None, error=f"unreadable after one re-ask: {again.error}")
    aspect_scores = dict(parsed.aspects)
    aspects_raw, aspects_error = "", None
    if aspects and parsed.ok and prompt.aspects_request:
        # A separate turn after the verdict: the verdict is produced exactly as in the paper.
        reply = ask(_follow_up(messages, first.text, prompt.aspects_request))
        aspects_raw = reply.text
        try:
            aspect_scores = parse_aspects_json(reply.text)
        except ValueError as exc:
            aspects_error = str(exc)
    return Judgment(
        score1=parsed.score1, score2=parsed.score2, raw=raw, aspects=aspect_scores, error=parsed.error,
        method=parsed.method, reasked=reasked, aspects_raw=aspects_raw, aspects_error=aspects_error,
        requests=len(replies),
        prompt_tokens=sum(r.prompt_tokens or 0 for r in replies),
        completion_tokens=sum(r.completion_tokens or 0 for r in replies),
    )
