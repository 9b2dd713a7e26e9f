"""Judging protocols: which pairs of answers are judged, in which order, under which key.

``paper``: the baseline is Assistant 1 and the model Assistant 2, one judgment per question (as
the paper did). ``swap`` (default): both orders, so a judge's preference for a position cancels
out and can be measured. Each judgment is a :class:`Task` with its cache key;
:mod:`vichat.evaluate.runner` sends them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from ..records import VichatError
from ..specs import JUDGE_MAX_TOKENS, JUDGE_TEMPERATURE, TRANSPORT_OPTIONS, JudgeResult
from .cache import judgment_key
from .files import Answer, Question
from .prompts import JudgePrompt, PromptBook

PROTOCOLS = ("paper", "swap")
BASELINE_FIRST, MODEL_FIRST = "baseline-first", "model-first"


@dataclass(frozen=True)
class JudgeSettings:
    """Who judges and how: everything here except transport options is part of the cache key."""

    judge: str = "openai"
    model: str = ""
    temperature: float = JUDGE_TEMPERATURE
    max_tokens: int = JUDGE_MAX_TOKENS
    aspects: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)

    def key_settings(self) -> dict[str, Any]:
        extra = {k: v for k, v in self.options.items() if k not in TRANSPORT_OPTIONS}
        return {"temperature": self.temperature, "max_tokens": self.max_tokens, "aspects": self.aspects, **extra}

    @property
    def reviewer_id(self) -> str:
        return f"{self.judge}:{self.model}" if self.model else self.judge


@dataclass(frozen=True)
class Task:
    """One judgment: a question, two answers in a given order, a prompt."""

    key: str
    question: Question
    order: str
    answer1: Answer
    answer2: Answer
    prompt: JudgePrompt

    @property
    def baseline_position(self) -> int:
        return 1 if self.order == BASELINE_FIRST else 2


def plan_tasks(
    questions: Mapping[Any, Question], answers: Mapping[Any, Answer], baseline: Mapping[Any, Answer], *,
    protocol: str, prompts: PromptBook, prompt_set: str, settings: JudgeSettings, skip_missing: bool = False,
) -> tuple[list[Task], list[Any]]:
    """The tasks of a protocol, in question order, and the question ids skipped for a missing answer.

    A question without a model or baseline answer is an error listing the ids, unless
    ``skip_missing`` (then the ids are returned so the caller can report them).
    """
    if protocol not in PROTOCOLS:
        raise VichatError(f"--protocol {protocol!r} must be one of {', '.join(PROTOCOLS)}")
    missing = [q for q in questions if q not in answers or q not in baseline]
    if missing and not skip_missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise VichatError(
            f"{len(missing)} question(s) have no model or baseline answer (question_id {shown}); "
            "check the files or pass --skip-missing to judge the rest"
        )
    orders = (BASELINE_FIRST,) if protocol == "paper" else (BASELINE_FIRST, MODEL_FIRST)
    tasks = []
    for qid, question in questions.items():
        if qid in missing:
            continue
        prompt = prompts.for_category(question.category, prompt_set)
        for order in orders:
            a1, a2 = (baseline[qid], answers[qid]) if order == BASELINE_FIRST else (answers[qid], baseline[qid])
            key = judgment_key(
                judge=settings.judge, model=settings.model, prompt_key=prompt.key,
                prompt_fingerprint=prompt.fingerprint, question=question.text, answer1=a1.text,
                answer2=a2.text, settings=settings.key_settings(),
            )
            tasks.append(Task(key, question, order, a1, a2, prompt))
    return tasks, missing


def _plain(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)  # "8" as FastChat wrote it, not "8.0"


def result_payload(result: JudgeResult) -> dict[str, Any]:
    """What is cached and written to a review for one judge result."""
    ok = result.score1 is not None and result.score2 is not None
    return {
        "score": [_plain(result.score1), _plain(result.score2)] if ok else None,
        "text": result.raw,
        "error": None if ok else (result.error or "the judge's text has no readable scores"),
        "aspects": {k: [_plain(a), _plain(b)] for k, (a, b) in dict(result.aspects).items()},
        "parse_method": getattr(result, "method", ""),
        "reasked": getattr(result, "reasked", False),
        "aspects_raw": getattr(result, "aspects_raw", ""),
        "aspects_error": getattr(result, "aspects_error", None),
        "usage": {
            "requests": getattr(result, "requests", 1),
            "prompt_tokens": getattr(result, "prompt_tokens", 0),
            "completion_tokens": getattr(result, "completion_tokens", 0),
        },
    }
