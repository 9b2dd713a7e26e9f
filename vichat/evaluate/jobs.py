"""The three evaluation jobs as plain functions (the click commands are thin wrappers over them)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from ..records import VichatError
from .cost import TYPICAL_COMPLETION_TOKENS, estimate_messages, price_for
from .files import (Answer, Question, check_out_path, default_category, load_answers, load_questions,
                    question_fingerprint, set_name_for, write_jsonl)
from .judge import JudgeSettings, Task, plan_tasks
from .runner import RunOptions, RunSummary, judge_keywords, run_tasks
from .prompts import load_prompts


@dataclass
class JudgeJob:
    """Inputs of ``vichat eval judge``."""

    questions: str | Path
    answers: str | Path
    baseline: str | Path
    out: str | Path
    settings: JudgeSettings = field(default_factory=JudgeSettings)
    protocol: str = "swap"
    prompt_set: str = "vicuna"
    prompt_paths: Sequence[str | Path] = ()
    run: RunOptions = field(default_factory=RunOptions)
    cache: str | Path | None = None
    use_cache: bool = True
    skip_missing: bool = False
    limit: int | None = None
    judge: Any = None  # the JudgeSpec named by settings.judge (the CLI resolves it from the registry)
    prompt_sets: Sequence[Any] | None = None  # JudgePromptsSpec objects; None: the sets shipped with vichat
    registry: Any = None  # the plugin registry, passed to the judge (a local judge finds its base model there)

    def spec(self) -> Any:
        if self.judge is None or getattr(self.judge, "name", None) != self.settings.judge:
            raise VichatError(f"JudgeJob needs judge=<the JudgeSpec named {self.settings.judge!r}> "
                              "(e.g. registry.judge(name))")
        return self.judge


@dataclass
class Estimate:
    """The ``--dry-run`` numbers (cache hits excluded)."""

    judgments: int
    cached: int
    to_send: int
    requests: int
    prompt_tokens: int
    typical_completion_tokens: int
    max_completion_tokens: int
    price: tuple[float, float] | None
    missing_env: list[str]
    missing: list[Any] = field(default_factory=list)  # questions --skip-missing would skip
    notes: list[str] = field(default_factory=list)

    def cost(self, completion_tokens: int) -> float | None:
        if self.price is None:
            return None
        return (self.prompt_tokens * self.price[0] + completion_tokens * self.price[1]) / 1_000_000


@dataclass
class JudgeOutcome:
    """What a judge run did and wrote."""

    tasks: list[Task]
    summary: RunSummary
    missing: list[Any]
    written: int
    failed: int  # reviews without scores: unreadable + not judged
    not_judged: int  # reviews whose judgment failed or was never sent
    notes: list[str] = field(default_factory=list)

    @property
    def unreadable(self) -> int:
        return self.failed - self.not_judged

    @property
    def scored(self) -> int:
        return self.written - self.failed


def _shown(ids: Sequence[Any], n: int = 10) -> str:
    return ", ".join(map(str, ids[:n])) + (", …" if len(ids) > n else "")


def check_answers_match(path: str | Path, answers: dict[Any, Answer], questions: dict[Any, Question],
                        asked: str) -> list[str]:
    """Refuse answers generated for other questions than ``questions`` (by the set and question
    fingerprint ``vichat eval generate`` records); returns notes on what could not be checked and
    on answers to question ids the set does not have."""
    notes = []
    wrong = [a for a in answers.values() if a.question_fingerprint and a.question_id in questions
             and a.question_fingerprint != question_fingerprint(questions[a.question_id].text)]
    if wrong:
        theirs = next((a.question_set for a in wrong if a.question_set), None)
        what = (f"answers the questions of {theirs}, not those of {asked}" if theirs and theirs != asked
                else f"answers other question texts than {asked}'s")
        raise VichatError(
            f"{path} {what}: {len(wrong)} of its answers were generated for other questions "
            f"(question_id {_shown([a.question_id for a in wrong])}); pass the question set they answer "
            "(--set/--questions) or the answers to this set"
        )
    extra = [qid for qid in answers if qid not in questions]
    if extra:
        notes.append(f"note: {len(extra)} answer(s) in {path} are for question ids not in {asked} "
                     f"(question_id {_shown(extra)}): not judged")
    unchecked = sum(1 for a in answers.values() if not a.question_fingerprint)
    if unchecked and answers:
        notes.append(f"note: {path} does not record which questions it answers (not written by vichat eval "
                     "generate, or an older version): answers are matched to questions by question_id only")
    return notes


def _prepare(job: JudgeJob, spec: Any) -> tuple[list[Task], list[Any], JudgeSettings, list[str]]:
    settings = job.settings
    if not settings.model and spec.default_model:
        settings = replace(settings, model=spec.default_model)
    judge_keywords(spec, settings)  # an option the judge does not take stops here, dry run included
    check_out_path(job.out)  # before anything is sent: paid judgments must not be lost at the write
    questions = load_questions(job.questions, default_category(job.questions))
    asked = set_name_for(job.questions)
    answers, baseline = load_answers(job.answers), load_answers(job.baseline)
    notes = check_answers_match(job.answers, answers, questions, asked)
    notes += check_answers_match(job.baseline, baseline, questions, asked)
    if job.limit is not None:
        questions = dict(list(questions.items())[: job.limit])
    tasks, missing = plan_tasks(
        questions, answers, baseline, protocol=job.protocol,
        prompts=load_prompts(job.prompt_paths, job.prompt_sets), prompt_set=job.prompt_set, settings=settings,
        skip_missing=job.skip_missing,
    )
    if not tasks:
        raise VichatError(
            f"nothing to judge: none of the {len(questions)} question(s) of {asked} has both a model and a "
            f"baseline answer (answers: {job.answers}, baseline: {job.baseline})"
        )
    return tasks, missing, settings, notes


def _price(job: JudgeJob, spec: Any, settings: JudgeSettings) -> tuple[float, float] | None:
    """Flags first, then the judge's own price (``(0, 0)`` for a free one), then the list price."""
    if job.run.price is not None:
        return job.run.price
    if spec.price is not None:
        return (float(spec.price[0]), float(spec.price[1]))
    return price_for(settings.model)


def _open_cache(job: JudgeJob):  # noqa: ANN202 - JudgmentCache or None
    from .cache import JudgmentCache

    return JudgmentCache(job.cache) if job.use_cache else None


def estimate_job(job: JudgeJob) -> Estimate:
    """What a run would send and cost, without sending anything."""
    spec = job.spec()
    tasks, missing, settings, notes = _prepare(job, spec)
    unique = {t.key: t for t in tasks}
    cache = _open_cache(job)
    hits = cache.lookup(unique, include_failed=not job.run.retry_failed) if cache is not None else {}
    if cache is not None:
        cache.close()
    todo = [t for k, t in unique.items() if k not in hits]
    per = 2 if settings.aspects else 1  # the aspect scores are a second turn
    prompt_tokens = sum(estimate_messages(t.prompt.messages(t.question.text, t.answer1.text, t.answer2.text)) for t in todo)
    return Estimate(
        judgments=len(tasks), cached=len(hits), to_send=len(todo), requests=per * len(todo),
        prompt_tokens=per * prompt_tokens, typical_completion_tokens=per * len(todo) * TYPICAL_COMPLETION_TOKENS,
        max_completion_tokens=per * len(todo) * settings.max_tokens, price=_price(job, spec, settings),
        missing_env=[v for v in spec.env_vars if not os.environ.get(v)], missing=missing, notes=notes,
    )


def judge_job(job: JudgeJob) -> JudgeOutcome:
    """Judge, commit each judgment to the cache, and write the review file (also when stopped by
    ``--max-cost``: unjudged pairs are written with ``score: null`` and say why)."""
    from .reviews import review_row

    spec = job.spec()
    tasks, missing, settings, notes = _prepare(job, spec)
    opts = replace(job.run, price=_price(job, spec, settings))
    cache = _open_cache(job)
    try:
        summary = run_tasks(spec, settings, tasks, cache, opts, registry=job.registry)
    finally:
        if cache is not None:
            cache.close()
    rows, failed, not_judged = [], 0, 0
    for t in tasks:
        payload = summary.results.get(t.key)
        error = summary.errors.get(t.key) or ("not judged: " + summary.stopped if summary.stopped else "not judged")
        row = review_row(t, payload, settings, job.protocol, error=None if payload else error)
        failed += row["score"] is None
        not_judged += payload is None
        rows.append(row)
    written = write_jsonl(job.out, rows)
    return JudgeOutcome(tasks, summary, missing, written, failed, not_judged, notes)


@dataclass
class ReportJob:
    """Inputs of ``vichat eval report``."""

    reviews: Sequence[str | Path]
    out: str | Path = "report"
    labels: Sequence[str] = ()
    questions: str | Path | None = None
    answers: Sequence[str | Path] = ()
    baseline_position: int | None = None
    reparse: str = "failed"
    n_boot: int = 2000
    seed: int = 0
    png: bool = True


def report_job(job: ReportJob) -> tuple[list[Any], dict[str, Path]]:
    """Read the review files, build one report per file, write the outputs."""
    from .render import write_outputs
    from .report import build_report
    from .reviews import answer_texts_from, read_reviews

    if job.labels and len(job.labels) != len(job.reviews):
        raise VichatError(f"{len(job.labels)} --label for {len(job.reviews)} review files: give one per file, or none")
    categories = None
    if job.questions is not None:
        categories = {q.question_id: q.category for q in load_questions(job.questions, default_category(job.questions)).values()}
    texts = answer_texts_from(job.answers) if job.answers else None
    reports = []
    for i, path in enumerate(job.reviews):
        verdicts = read_reviews(path, categories=categories, answer_texts=texts,
                                baseline_position=job.baseline_position, reparse=job.reparse)
        label = job.labels[i] if job.labels else Path(path).stem.removeprefix("review_")
        reports.append(build_report(label, str(path), verdicts, n_boot=job.n_boot, seed=job.seed))
    meta = {"reparse": job.reparse, "bootstrap": job.n_boot, "seed": job.seed}
    return reports, write_outputs(reports, job.out, png=job.png, meta=meta)
