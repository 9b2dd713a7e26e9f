"""Report arithmetic: per-question scores, per-category relative scores with bootstrap intervals,
wins/ties/losses, the sample-weighted total, and bias diagnostics.

The paper's scale: for each question, model score / baseline score x 100 (the baseline is 100);
a category's score is the mean over its questions (this reproduces the paper's score_*.jsonl to
the digit); the total is the sample-weighted mean of the category scores (which is how the paper's
Table III totals come out, and equals the mean over all scored questions). With the swap
protocol a question's model and baseline scores are each averaged over the two orders first.
A judgment whose text could not be read is counted and shown, never averaged in.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from statistics import fmean
from typing import Any, Iterable, Sequence

from .reviews import Verdict

#: The paper's category order (Table III); other categories follow in order of appearance.
PAPER_ORDER = ("generic", "knowledge", "roleplay", "common-sense", "fermi", "counterfactual", "coding", "math", "writing")
EPS = 1e-9


def display_name(category: str) -> str:
    """``common-sense`` -> ``Common-Sense`` (the paper's spelling)."""
    return "-".join(part[:1].upper() + part[1:] for part in category.split("-"))


@dataclass(frozen=True)
class QuestionScore:
    """One question: model and baseline scores averaged over its readable judgments."""

    question_id: Any
    category: str
    model: float | None
    baseline: float | None
    judgments: int
    failed: int

    @property
    def relative(self) -> float | None:
        """Model / baseline x 100; ``None`` without scores or with a baseline of 0."""
        if self.model is None or self.baseline is None or self.baseline <= 0:
            return None
        return self.model / self.baseline * 100.0


def by_question(verdicts: Iterable[Verdict]) -> list[QuestionScore]:
    """Group verdicts by question (both orders of the swap protocol fold into one)."""
    groups: dict[Any, list[Verdict]] = defaultdict(list)
    for v in verdicts:
        groups[v.question_id].append(v)
    out = []
    for qid, vs in groups.items():
        ok = [v for v in vs if v.ok]
        out.append(QuestionScore(
            question_id=qid, category=vs[0].category,
            model=fmean(v.model_score for v in ok) if ok else None,
            baseline=fmean(v.baseline_score for v in ok) if ok else None,
            judgments=len(vs), failed=len(vs) - len(ok),
        ))
    return out


@dataclass
class CategoryStats:
    """A row of the report."""

    category: str
    questions: int
    n: int
    score: float | None
    ci: tuple[float, float] | None
    wins: int
    ties: int
    losses: int
    failed_questions: int
    failed_judgments: int
    mean_model: float | None
    mean_baseline: float | None


def _bootstrap_means(values: Sequence[float], n_boot: int, rng: Any) -> Any:
    import numpy as np

    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return None
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    return x[idx].mean(axis=1)


def category_table(
    scores: Sequence[QuestionScore], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[list[CategoryStats], CategoryStats]:
    """Per-category rows in the paper's order, and the total row (sample-weighted mean).

    Intervals are percentile bootstraps over questions; the total's resamples questions within
    each category (stratified), so its interval matches how the total is built.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    groups: dict[str, list[QuestionScore]] = defaultdict(list)
    for s in scores:
        groups[s.category].append(s)
    order = [c for c in PAPER_ORDER if c in groups] + [c for c in groups if c not in PAPER_ORDER]
    lo_q, hi_q = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    rows, boots = [], []
    for cat in order:
        qs = groups[cat]
        rel = [q.relative for q in qs if q.relative is not None]
        boot = _bootstrap_means(rel, n_boot, rng)
        if boot is not None:
            boots.append((len(rel), boot))
        rows.append(_row(cat, qs, rel, None if boot is None else (float(np.percentile(boot, lo_q)), float(np.percentile(boot, hi_q)))))
    all_qs = [q for cat in order for q in groups[cat]]
    n_total = sum(r.n for r in rows)
    total = _row("total", all_qs, [q.relative for q in all_qs if q.relative is not None], None)
    if n_total:
        total.score = sum(r.n * r.score for r in rows if r.score is not None) / n_total
        weighted = sum(n * b for n, b in boots) / n_total
        total.ci = (float(np.percentile(weighted, lo_q)), float(np.percentile(weighted, hi_q)))
    return rows, total


def _row(cat: str, qs: Sequence[QuestionScore], rel: Sequence[float], ci: tuple[float, float] | None) -> CategoryStats:
    scored = [q for q in qs if q.model is not None and q.baseline is not None]
    return CategoryStats(
        category=cat, questions=len(qs), n=len(rel), score=fmean(rel) if rel else None, ci=ci,
        wins=sum(q.model > q.baseline + EPS for q in scored),
        ties=sum(abs(q.model - q.baseline) <= EPS for q in scored),
        losses=sum(q.model < q.baseline - EPS for q in scored),
        failed_questions=sum(q.model is None for q in qs),
        failed_judgments=sum(q.failed for q in qs),
        mean_model=fmean(q.model for q in scored) if scored else None,
        mean_baseline=fmean(q.baseline for q in scored) if scored else None,
    )


def _rate(k: int, n: int) -> dict[str, Any]:
    return {"count": k, "of": n, "rate": (k / n) if n else None}


def bias_diagnostics(verdicts: Sequence[Verdict]) -> dict[str, Any]:
    """How often the verdict flips when the order is swapped, how often the first position wins,
    how often the longer answer wins (ties excluded where a winner is needed)."""
    ok = [v for v in verdicts if v.ok]
    first = sum(v.score1 > v.score2 + EPS for v in ok)
    second = sum(v.score2 > v.score1 + EPS for v in ok)
    decided = [v for v in ok if abs(v.score1 - v.score2) > EPS]
    with_len = [v for v in decided if v.len1 is not None and v.len2 is not None and v.len1 != v.len2]
    longer = sum((v.score1 > v.score2) == (v.len1 > v.len2) for v in with_len)
    pairs: dict[Any, dict[int, Verdict]] = defaultdict(dict)
    for v in ok:
        pairs[v.question_id][v.baseline_position] = v
    both = [p for p in pairs.values() if len(p) == 2]

    def outcome(v: Verdict) -> int:
        d = v.model_score - v.baseline_score
        return 0 if abs(d) <= EPS else (1 if d > 0 else -1)

    flips = sum(outcome(p[1]) != outcome(p[2]) for p in both)
    gaps = [abs((p[1].model_score - p[1].baseline_score) - (p[2].model_score - p[2].baseline_score)) for p in both]
    return {
        "judgments": len(verdicts),
        "readable": len(ok),
        "first_position_wins": _rate(first, len(ok)),
        "second_position_wins": _rate(second, len(ok)),
        "ties": _rate(len(ok) - first - second, len(ok)),
        "order_flips": _rate(flips, len(both)),
        "mean_margin_change_on_swap": fmean(gaps) if gaps else None,
        "longer_answer_wins": _rate(longer, len(with_len)),
    }


@dataclass
class ModelReport:
    """Everything reported about one review file (one model against its baseline)."""

    label: str
    source: str
    model_id: str
    baseline_id: str
    rows: list[CategoryStats]
    total: CategoryStats
    bias: dict[str, Any]
    failures: list[dict[str, Any]] = field(default_factory=list)
    reparsed: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for row in [*d["rows"], d["total"]]:
            row["ci"] = list(row["ci"]) if row["ci"] is not None else None
        return d


def build_report(label: str, source: str, verdicts: Sequence[Verdict], *, n_boot: int = 2000, seed: int = 0) -> ModelReport:
    """The report for one review file."""
    rows, total = category_table(by_question(verdicts), n_boot=n_boot, seed=seed)
    failures = [{"question_id": v.question_id, "where": v.where, "error": v.error} for v in verdicts if not v.ok]
    reparsed = [
        {"question_id": v.question_id, "category": v.category, "where": v.where,
         "stated": list(v.original) if v.original else None,
         "parsed": [v.score1, v.score2] if v.ok else None}
        for v in verdicts if v.reparsed and (v.original is None or v.original != (v.score1, v.score2))
    ]
    return ModelReport(
        label=label, source=source,
        model_id=next((v.model_id for v in verdicts if v.model_id), ""),
        baseline_id=next((v.baseline_id for v in verdicts if v.baseline_id), ""),
        rows=rows, total=total, bias=bias_diagnostics(verdicts), failures=failures, reparsed=reparsed,
    )
