"""Repair a translated file whose code the translation broke: re-translate those records from English.

``vichat translate --repair BROKEN.jsonl OUTPUT --source-records EN.json -t TRANSLATOR``:

1. every record of BROKEN is checked by :func:`vichat.data.quality.record_code_problems`;
2. each flagged record is matched to its English original in EN (:mod:`.matching`: by id, by
   position, or by content);
3. the original's ``instruction``, ``input`` and ``output`` go through the same engine, cache and
   code protection as any translation, so the code comes back as it was in English;
4. OUTPUT is BROKEN with the repaired records in place of the broken ones: same order, same ids,
   same other fields. A file with ``prompt``/``response`` (the Vietnamese Alpaca of GPT4VN) gets
   ``prompt = instruction + ": " + input`` (the way that file joined them) and ``response = output``.

Records that cannot be matched, and records whose re-translation failed, are written back unchanged
and listed with the reason in ``OUTPUT.unmatched.jsonl`` and ``OUTPUT.failed.jsonl``. Like every
translation it is cached per segment: an interrupted or failed run resumes on rerun and pays only
for what is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..data.quality import describe_hits, record_code_problems
from ..data.quality_eval import as_fields
from ..records import VichatError
from ..retry import Backoff
from ..specs import TranslatorSpec
from .cache import TranslationCache
from .engine import Engine, Plan, Segment
from .errors import FatalTranslatorError, TranslationInterrupted
from .job import TranslateSummary, _engine, _fill, open_cache, resolve_translator
from .matching import MATCH_MODES, ContentIndex, Match, check_order, choose_mode, match_by_id, match_by_index
from .output import OrderedWriter, failed_path_for

SOURCE_FIELDS = ("instruction", "input", "output")


def unmatched_path_for(output: str | Path) -> Path:
    """``data/vi.jsonl`` -> ``data/vi.unmatched.jsonl``."""
    output = Path(output)
    stem = output.name[: -len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(stem + ".unmatched.jsonl")


@dataclass
class RepairSummary(TranslateSummary):
    """What :func:`repair_file` did, on top of the translation counts."""

    source_records: str = ""
    match: str = ""
    flagged: int = 0
    repaired: int = 0
    unmatched: int = 0
    still_flagged: int = 0
    unmatched_path: str | None = None
    still_flagged_examples: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = super().lines()
        out.insert(1, f"  repair: {self.flagged} records with broken code, {self.repaired} re-translated from "
                      f"{self.source_records} (matched by {self.match}), {self.unmatched} unmatched")
        if self.unmatched:
            out.insert(2, f"  unmatched records were left as they were; reasons in {self.unmatched_path}")
        if self.still_flagged:
            out.append(f"  note: {self.still_flagged} repaired records still look broken: "
                       + " | ".join(self.still_flagged_examples[:2]))
        return out


@dataclass
class _Task:
    """One flagged record: its position, original row, match and queued segments."""

    index: int
    row: Any
    hits: str
    match: Match
    segments: dict[str, Segment] = field(default_factory=dict)


def _rows(path: str | Path, what: str) -> list[Any]:
    from ..data.readers import Unreadable, read_rows

    rows = list(read_rows(path))
    for row in rows:
        if isinstance(row.data, Unreadable):
            raise VichatError(f"{row.location}: {row.data.problem} (fix the {what} file; --repair needs every record)")
    return rows


def _matches(mode: str, tasks: Sequence[_Task], rows: Sequence[Any], sources: Sequence[Any]) -> dict[int, Match]:
    if mode == "id":
        found = match_by_id([t.row.data.get("id") for t in tasks], [s.data.get("id") for s in sources])
        return {t.index: m for t, m in zip(tasks, found)}
    if mode == "index":
        found = match_by_index(len(rows), len(sources))
        return {t.index: found[t.index] for t in tasks}
    index = ContentIndex(["\n".join(as_fields(s.data)[k] for k in SOURCE_FIELDS) for s in sources])
    found = {}
    for t in tasks:
        f = as_fields(t.row.data)
        found[t.index] = index.match("\n".join(f[k] for k in SOURCE_FIELDS), t.index)
    return check_order(found)


def _compose(row: Mapping[str, Any], translated: Mapping[str, str]) -> dict[str, Any]:
    """The broken row with the re-translated fields in place, in its own field names and key order."""
    out = dict(row)
    if "instruction" not in row and "prompt" in row:
        prompt = translated["instruction"]
        if translated.get("input"):
            prompt += ": " + translated["input"]
        out["prompt"] = prompt
        out["response"] = translated["output"]
        return out
    out["instruction"] = translated["instruction"]
    if "input" in row or translated.get("input"):
        out["input"] = translated.get("input", "")
    key = "output" if "output" in row or "response" not in row else "response"
    out[key] = translated["output"]
    return out


def _prepare(engine: Engine, input: str | Path, source_records: str | Path, match: str) -> tuple[list[Any], list[Any], list[_Task], str]:
    if match not in MATCH_MODES:
        raise VichatError(f"--match {match!r}: choose one of {', '.join(MATCH_MODES)}")
    rows = _rows(input, "input")
    sources = _rows(source_records, "--source-records")
    tasks = []
    for i, row in enumerate(rows):
        hits = record_code_problems(as_fields(row.data))
        if hits:
            tasks.append(_Task(i, row, describe_hits(hits, 2), Match(None)))
    mode = choose_mode(match, [r.data for r in rows], [s.data for s in sources])
    found = _matches(mode, tasks, rows, sources)
    for t in tasks:
        t.match = found[t.index]
        if t.match.source is None:
            continue
        original = as_fields(sources[t.match.source].data)
        for name in SOURCE_FIELDS:
            if original[name] or name != "input":
                t.segments[name] = engine.add(original[name])
    return rows, sources, tasks, mode


def plan_repair(
    input: str | Path, source_records: str | Path, translator: TranslatorSpec, source: str = "en",
    target: str = "vi", *, match: str = "auto", options: Mapping[str, Any] | None = None,
    cache: TranslationCache | str | Path | bool | None = None, batch_size: int | None = None,
    batch_chars: int | None = None, code_lines: bool = True,
) -> tuple[Plan, dict[str, int]]:
    """The dry run of a repair: the translation plan and ``{"flagged", "matched", "unmatched"}``."""
    spec = resolve_translator(translator)
    db, owned = open_cache(cache)
    try:
        engine = _engine(spec, source, target, db, options=options, batch_size=batch_size,
                         batch_chars=batch_chars, code_lines=code_lines)
        rows, _, tasks, mode = _prepare(engine, input, source_records, match)
        plan = engine.plan()
        plan.records = len(rows)
        matched = sum(1 for t in tasks if t.match.source is not None)
        return plan, {"flagged": len(tasks), "matched": matched, "unmatched": len(tasks) - matched, "mode": mode}
    finally:
        if owned:
            db.close()


def repair_file(
    input: str | Path,
    output: str | Path,
    source_records: str | Path,
    translator: TranslatorSpec,
    source: str = "en",
    target: str = "vi",
    *,
    match: str = "auto",
    options: Mapping[str, Any] | None = None,
    concurrency: int = 8,
    cache: TranslationCache | str | Path | bool | None = None,
    backoff: Backoff | None = None,
    batch_size: int | None = None,
    batch_chars: int | None = None,
    code_lines: bool = True,
    progress: bool | None = None,
) -> RepairSummary:
    """Write ``output``: ``input`` with its broken-code records re-translated from ``source_records``.

    Raises :class:`TranslationInterrupted` on Ctrl-C (finished segments are cached) and
    :class:`FatalTranslatorError` when the translator refuses every request.
    """
    input, output = Path(input), Path(output)
    if output.exists() and input.exists() and output.resolve() == input.resolve():
        raise VichatError(f"{output}: OUTPUT must differ from INPUT (the input would be overwritten)")
    spec = resolve_translator(translator)
    db, owned = open_cache(cache)
    summary = RepairSummary(str(input), str(output), str(failed_path_for(output)), source_records=str(source_records),
                            unmatched_path=str(unmatched_path_for(output)))
    try:
        engine = _engine(spec, source, target, db, options=options, concurrency=concurrency, backoff=backoff,
                         batch_size=batch_size, batch_chars=batch_chars, code_lines=code_lines, progress=progress)
        rows, sources, tasks, summary.match = _prepare(engine, input, source_records, match)
        summary.records, summary.flagged = len(rows), len(tasks)
        engine.require_env()  # before OUTPUT.partial exists
        # Failures are written back unchanged (OUTPUT keeps every record) and listed separately.
        writer = OrderedWriter(output, failed_path_for(output))
        failures: list[dict[str, Any]] = []
        by_segment = {seg.index: t for t in tasks for seg in t.segments.values()}
        pending = {t.index: len(t.segments) for t in tasks}
        flagged = {t.index: t for t in tasks}

        def finish(t: _Task) -> None:
            errors = {name: seg.error for name, seg in t.segments.items() if seg.error}
            if errors:
                reason = "; ".join(f"{name}: {err}" for name, err in errors.items())
                failures.append({"location": t.row.location, "reason": reason, "record": dict(t.row.data)})
                writer.put(t.index, True, t.row.data)
                return
            repaired = _compose(t.row.data, {name: seg.result or "" for name, seg in t.segments.items()})
            reference = as_fields(sources[t.match.source].data)
            still = record_code_problems(as_fields(repaired), reference=reference)
            if still:
                summary.still_flagged += 1
                summary.still_flagged_examples.append(f"{t.row.location}: {describe_hits(still, 1)}")
            summary.repaired += 1
            writer.put(t.index, True, repaired)

        def on_done(seg: Segment) -> None:
            t = by_segment[seg.index]
            pending[t.index] -= 1
            if pending[t.index] == 0:
                finish(t)

        try:
            for i, row in enumerate(rows):
                task = flagged.get(i)
                if task is None or task.match.source is None:
                    writer.put(i, True, row.data)  # not broken, or broken without an original
            stats = engine.run(on_done)
        except KeyboardInterrupt:
            writer.abort()
            _fill(summary, engine, writer, interrupted=True)
            raise TranslationInterrupted(summary) from None
        except FatalTranslatorError as exc:
            writer.abort()
            raise FatalTranslatorError(f"{exc} (stopped; finished segments are cached: rerun to resume)") from exc
        except BaseException:
            writer.abort()
            raise
        writer.finish()
        _fill(summary, engine, writer)
        summary.elapsed = stats.elapsed
        unmatched = [{"location": t.row.location, "reason": t.match.reason, "problems": t.hits}
                     for t in tasks if t.match.source is None]
        summary.unmatched = len(unmatched)
        summary.failed_records = len(failures)
        _write_side(unmatched_path_for(output), unmatched)
        _write_side(failed_path_for(output), failures)
        summary.unmatched_path = str(unmatched_path_for(output)) if unmatched else None
        summary.failed_path = str(failed_path_for(output)) if failures else None
        return summary
    finally:
        if owned:
            db.close()


def _write_side(path: Path, entries: list[dict[str, Any]]) -> None:
    """Write a side file of JSON lines atomically, or remove a stale one when there is nothing to list."""
    from ..data.prepare import write_text_atomic

    if entries:
        write_text_atomic(path, "".join(json.dumps(e, ensure_ascii=False, default=str) + "\n" for e in entries))
    else:
        path.unlink(missing_ok=True)
