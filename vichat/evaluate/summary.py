"""Human-readable lines for ``vichat eval judge``: the dry-run estimate and the run summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _money(x: float | None) -> str:
    if x is None:
        return "unknown (pass --price-in/--price-out)"
    return "free ($0.00)" if x == 0 else f"${x:,.2f}"


def format_estimate(est: Any) -> list[str]:
    """The ``--dry-run`` table (``est``: :class:`vichat.evaluate.jobs.Estimate`)."""
    rows = [
        ("judgments", f"{est.judgments:,} ({est.cached:,} cached, {est.to_send:,} to send)"),
        ("requests", f"{est.requests:,} (+ one re-ask for each unreadable review)"),
        ("prompt tokens", f"~{est.prompt_tokens:,} (estimated)"),
        ("completion tokens", f"~{est.typical_completion_tokens:,} typical, at most {est.max_completion_tokens:,}"),
        ("estimated cost", f"{_money(est.cost(est.typical_completion_tokens))} typical, "
                           f"at most {_money(est.cost(est.max_completion_tokens))}"),
    ]
    missing = getattr(est, "missing", [])
    if missing:
        rows.insert(1, ("skipped questions", f"{len(missing):,} without both answers (question_id {_ids(missing)})"))
    width = max(len(k) for k, _ in rows)
    out = ["dry run: nothing was sent"] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
    out += list(getattr(est, "notes", []))
    if est.missing_env and est.to_send:
        out.append(f"  note: set {', '.join(est.missing_env)} before the real run")
    return out


def _ids(ids: list[Any], n: int = 10) -> str:
    return ", ".join(map(str, ids[:n])) + (", …" if len(ids) > n else "")


def format_outcome(outcome: Any, out: str | Path) -> list[str]:
    """What a run did (``outcome``: :class:`vichat.evaluate.jobs.JudgeOutcome`)."""
    s = outcome.summary
    u = s.usage
    # The reviews' parts add up to the reviews written; judgments are counted apart, since one
    # judgment (identical answers) can fill both orders of a question.
    shared = len(outcome.tasks) - len({t.key for t in outcome.tasks})
    lines = [
        f"{outcome.written} reviews written to {out}: {outcome.scored} with scores, "
        f"{outcome.unreadable} without readable scores, {outcome.not_judged} not judged",
        f"judgments: {s.judged} judged now, {s.cached} from the cache"
        + (f"; {shared} review(s) share the judgment of the other order (identical answers)" if shared else ""),
        f"requests {u.requests} answered, {s.attempts} attempts; tokens {u.prompt_tokens:,} in + "
        f"{u.completion_tokens:,} out; cost ${u.cost:,.4f}; {s.elapsed:.1f}s",
    ]
    rpm, tpm = s.limits
    if rpm or tpm:
        parts = [f"{rpm:,.0f} requests/min" if rpm else "no request limit",
                 f"{tpm:,.0f} tokens/min" if tpm else "no token limit"]
        lines.append(f"rate limit {', '.join(parts)}" + (" (announced by the server)" if s.limits_announced else ""))
    if outcome.missing:
        lines.append(f"skipped {len(outcome.missing)} question(s) without both answers: question_id {_ids(outcome.missing)}")
    lines += list(getattr(outcome, "notes", []))
    for key, err in list(s.errors.items())[:5]:
        lines.append(f"failed: {err}")
    return lines
