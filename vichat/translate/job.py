"""The Python API: translate texts, or a dataset file into JSONL, through a translator plugin.

``translate_file`` is what ``vichat translate`` runs; ``plan_file`` is its ``--dry-run``;
``translate_texts`` serves the data pipeline and notebooks. All three share one cache, so a text
paid for once is never paid for again, whichever entry point asked for it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..records import VichatError
from ..specs import TranslatorSpec
from .cache import TranslationCache
from .engine import Engine, Plan, RunStats, Segment
from .errors import FatalTranslatorError, TranslationInterrupted
from .output import OrderedWriter, failed_path_for
from ..retry import Backoff

DEFAULT_FIELDS = ("instruction", "input", "output")


@dataclass
class TranslateSummary:
    """What :func:`translate_file` did. Segments are the translated fields of the records."""

    input: str
    output: str
    failed_path: str | None
    records: int = 0
    written: int = 0
    failed_records: int = 0  # everything in the side file, unreadable input rows included
    unreadable: int = 0  # of those, input rows the reader could not parse: a rerun cannot help
    segments: int = 0
    translated: int = 0
    from_cache: int = 0
    skipped: int = 0
    failed: int = 0
    requests: int = 0
    characters_sent: int = 0
    elapsed: float = 0.0
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The closing summary, as printed by ``vichat translate``."""
        head = "interrupted" if self.interrupted else "done"
        out = [
            f"{head}: {self.records} records in {self.elapsed:.1f}s; {self.written} written to "
            f"{self.output if not self.interrupted else self.output + '.partial'}",
            f"  segments: {self.translated} translated, {self.from_cache} from cache, "
            f"{self.skipped} with nothing to translate, {self.failed} failed",
            f"  requests: {self.requests} ({self.characters_sent:,} characters sent)",
        ]
        untranslated = self.failed_records - self.unreadable
        if untranslated:
            out.append(f"  failed records: {untranslated}, written to {self.failed_path} (rerun to retry them)")
        if self.unreadable:
            out.append(f"  unreadable input rows: {self.unreadable}, listed in {self.failed_path} with line and "
                       "reason (a rerun repeats them: fix the input)")
        if self.interrupted:
            out.append("  finished segments are cached: rerun the same command to resume")
        out.extend(f"  note: {n}" for n in self.notes)
        return out


@dataclass
class TextsResult:
    """What :func:`translate_texts` did: one translation or one error per input text."""

    translations: list[str | None]
    errors: list[str | None]
    plan: Plan
    stats: RunStats

    @property
    def ok(self) -> bool:
        return all(e is None for e in self.errors)


def resolve_translator(translator: TranslatorSpec) -> TranslatorSpec:
    """``translator`` itself, checked: names become specs at the edge (``registry.translator(name)``)."""
    if not isinstance(translator, TranslatorSpec):
        raise VichatError(f"pass the translator as a TranslatorSpec (registry.translator({translator!r})), "
                          f"not {type(translator).__name__}")
    return translator


def open_cache(cache: TranslationCache | str | Path | bool | None) -> tuple[TranslationCache, bool]:
    """``(cache, owned)``: None -> the default file, False -> in memory only, a path -> that file."""
    if isinstance(cache, TranslationCache):
        return cache, False
    if cache is False:
        return TranslationCache(":memory:"), True
    if cache is True:
        cache = None
    return TranslationCache(cache), True


def _engine(spec: TranslatorSpec, source: str, target: str, cache: TranslationCache, **kw: Any) -> Engine:
    if not source or not target:
        raise VichatError("--source and --target must name languages, e.g. --source en --target vi")
    return Engine(spec, source, target, cache, **kw)


def translate_texts(
    texts: Sequence[str],
    translator: TranslatorSpec,
    source: str = "en",
    target: str = "vi",
    *,
    options: Mapping[str, Any] | None = None,
    cache: TranslationCache | str | Path | bool | None = None,
    concurrency: int = 8,
    backoff: Backoff | None = None,
    batch_size: int | None = None,
    batch_chars: int | None = None,
    code_lines: bool = True,
    progress: bool | None = False,
) -> TextsResult:
    """Translate ``texts`` (same order out); a failed text has ``None`` and a reason in ``errors``."""
    spec = resolve_translator(translator)
    db, owned = open_cache(cache)
    try:
        engine = _engine(
            spec, source, target, db, options=options, concurrency=concurrency, backoff=backoff,
            batch_size=batch_size, batch_chars=batch_chars, code_lines=code_lines, progress=progress,
        )
        segs = [engine.add(t) for t in texts]
        plan = engine.plan()
        stats = engine.run()
        return TextsResult([s.result for s in segs], [s.error for s in segs], plan, stats)
    finally:
        if owned:
            db.close()


def _read(input: str | Path, limit: int | None) -> list[Any]:
    from ..data.readers import read_rows

    if limit is not None and limit < 0:
        raise VichatError("--limit must be zero or more")
    return list(itertools.islice(read_rows(input), limit))


def _load(engine: Engine, rows: list[Any], fields: Sequence[str]) -> tuple[dict[int, list[tuple[str, Segment]]], list[str]]:
    from ..data.readers import Unreadable

    fields = [f.strip() for f in fields if f.strip()]
    if not fields:
        raise VichatError("--fields must name at least one field, e.g. --fields instruction,input,output")
    per_record: dict[int, list[tuple[str, Segment]]] = {}
    seen: set[str] = set()
    keys: set[str] = set()
    for idx, row in enumerate(rows):
        if isinstance(row.data, Unreadable):
            continue
        keys.update(row.data.keys())
        for name in fields:
            value = row.data.get(name)
            if name in row.data:
                seen.add(name)
            if isinstance(value, str):  # numbers, lists and nulls are kept as they are
                per_record.setdefault(idx, []).append((name, engine.add(value)))
    notes = []
    if rows and not seen and keys:
        raise VichatError(
            f"none of the fields {', '.join(fields)} is in the input; its records have "
            f"{', '.join(sorted(keys))} (choose with --fields)"
        )
    missing = [f for f in fields if f not in seen]
    if rows and missing:
        notes.append(f"no record has the field(s) {', '.join(missing)}")
    return per_record, notes


def plan_file(
    input: str | Path,
    translator: TranslatorSpec,
    source: str = "en",
    target: str = "vi",
    *,
    fields: Sequence[str] = DEFAULT_FIELDS,
    options: Mapping[str, Any] | None = None,
    limit: int | None = None,
    cache: TranslationCache | str | Path | bool | None = None,
    batch_size: int | None = None,
    batch_chars: int | None = None,
    code_lines: bool = True,
) -> Plan:
    """The dry run: characters, segments, requests and cost still to pay; sends nothing."""
    spec = resolve_translator(translator)
    db, owned = open_cache(cache)
    try:
        engine = _engine(spec, source, target, db, options=options, batch_size=batch_size,
                         batch_chars=batch_chars, code_lines=code_lines)
        rows = _read(input, limit)
        _load(engine, rows, fields)
        plan = engine.plan()
        plan.records = len(rows)
        return plan
    finally:
        if owned:
            db.close()


def translate_file(
    input: str | Path,
    output: str | Path,
    translator: TranslatorSpec,
    source: str = "en",
    target: str = "vi",
    *,
    fields: Sequence[str] = DEFAULT_FIELDS,
    options: Mapping[str, Any] | None = None,
    concurrency: int = 8,
    limit: int | None = None,
    cache: TranslationCache | str | Path | bool | None = None,
    backoff: Backoff | None = None,
    batch_size: int | None = None,
    batch_chars: int | None = None,
    code_lines: bool = True,
    progress: bool | None = None,
) -> TranslateSummary:
    """Translate ``fields`` of every record of ``input`` into JSONL ``output``, in input order.

    Failed records (a field that could not be translated faithfully, an unreadable row) go to
    ``failed_path_for(output)`` with location and reason. Raises :class:`TranslationInterrupted`
    (a ``KeyboardInterrupt`` carrying the summary) on Ctrl-C, after a clean stop.
    """
    input, output = Path(input), Path(output)
    if output.exists() and input.exists() and output.resolve() == input.resolve():
        raise VichatError(f"{output}: OUTPUT must differ from INPUT (the input would be overwritten)")
    spec = resolve_translator(translator)
    db, owned = open_cache(cache)
    summary = TranslateSummary(str(input), str(output), str(failed_path_for(output)))
    try:
        engine = _engine(
            spec, source, target, db, options=options, concurrency=concurrency, backoff=backoff,
            batch_size=batch_size, batch_chars=batch_chars, code_lines=code_lines, progress=progress,
        )
        rows = _read(input, limit)
        per_record, summary.notes = _load(engine, rows, fields)
        summary.records = len(rows)
        engine.require_env()  # before OUTPUT.partial exists
        writer = OrderedWriter(output, summary.failed_path)
        remaining = {idx: len(segs) for idx, segs in per_record.items()}
        owner = {seg.index: idx for idx, segs in per_record.items() for _, seg in segs}

        def finish_record(idx: int) -> None:
            row = rows[idx]
            ok, entry = _result(row, per_record.get(idx, []), source, target)
            writer.put(idx, ok, entry)

        def on_done(seg: Segment) -> None:
            idx = owner[seg.index]
            remaining[idx] -= 1
            if remaining[idx] == 0:
                finish_record(idx)

        try:
            for idx in range(len(rows)):  # records with nothing to translate are finished already
                if idx not in per_record:
                    finish_record(idx)
            stats = engine.run(on_done)
        except KeyboardInterrupt:
            writer.abort()
            _fill(summary, engine, writer, interrupted=True)
            summary.unreadable = _unreadable_written(rows, writer)
            raise TranslationInterrupted(summary) from None
        except FatalTranslatorError as exc:
            writer.abort()
            _fill(summary, engine, writer)
            summary.unreadable = _unreadable_written(rows, writer)
            raise FatalTranslatorError(
                f"{exc} (stopped; {summary.translated} segments finished and are cached: rerun to resume)"
            ) from exc
        except BaseException:
            writer.abort()
            raise
        writer.finish()
        _fill(summary, engine, writer)
        summary.unreadable = _unreadable_written(rows, writer)
        summary.elapsed = stats.elapsed
        if not summary.failed_records:
            summary.failed_path = None
        return summary
    finally:
        if owned:
            db.close()


def _unreadable_written(rows: Sequence[Any], writer: OrderedWriter) -> int:
    """How many of the rows already written to the side file are input rows the reader could not
    parse (written in input order: the first ``writer.next`` rows are out)."""
    from ..data.readers import Unreadable

    return sum(isinstance(row.data, Unreadable) for row in rows[: writer.next])


def _result(row: Any, segs: list[tuple[str, Segment]], source: str, target: str) -> tuple[bool, dict[str, Any]]:
    from ..data.readers import Unreadable

    if isinstance(row.data, Unreadable):
        return False, {"location": row.location, "reason": row.data.problem, "record": row.data.text}
    errors = {name: seg.error for name, seg in segs if seg.error}
    if errors:
        reason = "; ".join(f"{name}: {err}" for name, err in errors.items())
        return False, {"location": row.location, "reason": reason, "fields": errors, "record": dict(row.data)}
    record = dict(row.data)
    for name, seg in segs:
        record[name] = seg.result
    if record.get("language") == source:  # the record now is in the target language
        record["language"] = target
    return True, record


def _fill(summary: TranslateSummary, engine: Engine, writer: OrderedWriter, interrupted: bool = False) -> None:
    summary.interrupted = interrupted
    summary.written = writer.written
    summary.failed_records = writer.failed_count
    summary.segments = len(engine.segments)
    for seg in engine.segments:
        if not seg.done:
            continue
        if seg.error:
            summary.failed += 1
        elif seg.skipped:
            summary.skipped += 1
        elif seg.from_network:
            summary.translated += 1
        else:
            summary.from_cache += 1
    summary.requests = engine.stats.requests
    summary.characters_sent = engine.stats.characters_sent
    summary.elapsed = engine.stats.elapsed


def iter_failed(path: str | Path) -> Iterable[dict[str, Any]]:
    """The entries of a failed side file (for tests and reports)."""
    import json

    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)
