"""Review files: writing vichat's (the FastChat review format plus its own fields) and reading
vichat's or the paper's into :class:`Verdict` rows a report can count.

A vichat review line::

    {"review_id", "question_id", "category", "answer1_id", "answer2_id", "reviewer_id",
     "metadata": {"temperature", "max_tokens"}, "text", "score": [s1, s2] or null,
     "judge", "judge_model", "prompt_id", "prompt_version", "protocol", "order",
     "baseline_position", "model_id", "baseline_id", "answer1_chars", "answer2_chars",
     "parse_method", "reasked", "error", "aspects", "aspects_error", "usage"}

``score`` is ``null`` when the judge's text could not be read (FastChat wrote ``[-1, -1]``, which
its averages then silently included). Reading the paper's files, a score with a negative value is
such a failure: its text is parsed again with :func:`vichat.evaluate.parse.parse_scores`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..records import VichatError
from .files import read_jsonl, short_id
from .judge import JudgeSettings, Task
from .parse import parse_scores

REPARSE = ("failed", "all", "none")


def review_row(task: Task, payload: Mapping[str, Any] | None, settings: JudgeSettings, protocol: str,
               error: str | None = None) -> dict[str, Any]:
    """One review line for ``task``; ``payload`` ``None`` means it was not judged (``error`` says why)."""
    baseline, model = (task.answer1, task.answer2) if task.baseline_position == 1 else (task.answer2, task.answer1)
    payload = payload or {}
    return {
        "review_id": short_id(task.key, task.order),  # one key may serve both orders (identical answers)
        "question_id": task.question.question_id,
        "category": task.question.category,
        "answer1_id": task.answer1.answer_id,
        "answer2_id": task.answer2.answer_id,
        "reviewer_id": f"{settings.reviewer_id}:{task.prompt.key}",
        "metadata": {"temperature": settings.temperature, "max_tokens": settings.max_tokens},
        "text": payload.get("text", ""),
        "score": payload.get("score"),
        "judge": settings.judge,
        "judge_model": settings.model,
        "prompt_id": task.prompt.prompt_id,
        "prompt_version": task.prompt.version,
        "protocol": protocol,
        "order": task.order,
        "baseline_position": task.baseline_position,
        "model_id": model.model_id,
        "baseline_id": baseline.model_id,
        "answer1_chars": len(task.answer1.text),
        "answer2_chars": len(task.answer2.text),
        "parse_method": payload.get("parse_method", ""),
        "reasked": payload.get("reasked", False),
        "error": payload.get("error") if payload else (error or "not judged"),
        "aspects": payload.get("aspects", {}),
        "aspects_error": payload.get("aspects_error"),
        "usage": payload.get("usage", {}),
    }


@dataclass(frozen=True)
class Verdict:
    """One judgment as a report sees it (scores by position; ``None`` when unreadable)."""

    question_id: Any
    category: str
    baseline_position: int
    score1: float | None
    score2: float | None
    len1: int | None = None
    len2: int | None = None
    where: str = ""
    model_id: str = ""
    baseline_id: str = ""
    reparsed: bool = False
    original: tuple[float, float] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.score1 is not None and self.score2 is not None

    @property
    def model_score(self) -> float | None:
        return self.score2 if self.baseline_position == 1 else self.score1

    @property
    def baseline_score(self) -> float | None:
        return self.score1 if self.baseline_position == 1 else self.score2


def _file_scores(value: Any) -> tuple[float, float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        try:
            pair = (float(value[0]), float(value[1]))
        except (TypeError, ValueError):
            return None
        return pair if min(pair) >= 0 else None  # FastChat's -1 marks a failed parse
    return None


def read_reviews(
    path: str | Path, *, categories: Mapping[Any, str] | None = None,
    answer_texts: Mapping[str, tuple[str, str]] | None = None,
    baseline_position: int | None = None, reparse: str = "failed",
) -> list[Verdict]:
    """The verdicts in one review file, vichat's or the paper's (FastChat) format.

    :param categories: question id -> category, for files whose lines carry none.
    :param answer_texts: answer id -> (text, model id), for lengths and model names that files
        in the paper's format do not record.
    :param baseline_position: where the baseline sits in files that do not say (the paper: 1).
    :param reparse: ``failed`` (parse texts whose score is missing or -1), ``all``, or ``none``.
    """
    if reparse not in REPARSE:
        raise VichatError(f"--reparse {reparse!r} must be one of {', '.join(REPARSE)}")
    out = []
    for where, obj in read_jsonl(path):
        if "score" not in obj:
            lacks = " / ".join(f for f in ("score", "answer1_id", "answer2_id") if f not in obj)
            hint = "; it looks like an answers file" if "answer_id" in obj or "model_id" in obj else ""
            raise VichatError(f"{where} is not a review (no {lacks}{hint}); "
                              "`vichat eval report` reads the reviews `vichat eval judge` writes")
        if "question_id" not in obj:
            raise VichatError(f"{where}: missing field 'question_id'")
        qid = obj["question_id"]
        category = obj.get("category") or (categories or {}).get(qid) or "all"
        position = obj.get("baseline_position") or baseline_position or 1
        if position not in (1, 2):
            raise VichatError(f"{where}: baseline_position must be 1 or 2, got {position!r}")
        stated = _file_scores(obj.get("score"))
        scores, reparsed, error = stated, False, obj.get("error")
        vichat_failure = "baseline_position" in obj and obj.get("score") is None
        if (reparse == "all" or (reparse == "failed" and stated is None)) and not vichat_failure and obj.get("text"):
            parsed = parse_scores(str(obj["text"]), "tuple" if category == "math" else "pair")
            reparsed = True
            scores = (parsed.score1, parsed.score2) if parsed.ok else None
            error = parsed.error
        if scores is None and not error:
            error = "no readable scores"
        lens = (obj.get("answer1_chars"), obj.get("answer2_chars"))
        ids = {"model_id": obj.get("model_id"), "baseline_id": obj.get("baseline_id")}
        if answer_texts:
            a1, a2 = answer_texts.get(str(obj.get("answer1_id"))), answer_texts.get(str(obj.get("answer2_id")))
            if lens[0] is None:
                lens = (len(a1[0]) if a1 else None, len(a2[0]) if a2 else None)
            base, model = (a1, a2) if position == 1 else (a2, a1)
            ids = {"model_id": ids["model_id"] or (model[1] if model else None),
                   "baseline_id": ids["baseline_id"] or (base[1] if base else None)}
        out.append(Verdict(
            question_id=qid, category=str(category), baseline_position=int(position),
            score1=scores[0] if scores else None, score2=scores[1] if scores else None,
            len1=lens[0], len2=lens[1], where=where, model_id=str(ids["model_id"] or ""),
            baseline_id=str(ids["baseline_id"] or ""), reparsed=reparsed, original=stated,
            error=None if scores else error,
        ))
    if not out:
        raise VichatError(f"{path}: no reviews")
    return out


def answer_texts_from(paths: Iterable[str | Path]) -> dict[str, tuple[str, str]]:
    """answer id -> (text, model id) over answer files, for reviews that record neither."""
    texts: dict[str, tuple[str, str]] = {}
    for path in paths:
        for _, obj in read_jsonl(path):
            if "answer_id" in obj and isinstance(obj.get("text"), str):
                texts[str(obj["answer_id"])] = (obj["text"], str(obj.get("model_id") or Path(path).stem))
    return texts
