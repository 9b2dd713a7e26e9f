"""Load a dataset by registered name or by path into validated, normalised :class:`Record` objects.

What loading guarantees, whatever the source:

* every text field is Unicode NFC and stripped of surrounding whitespace;
* every record has a non-empty ``instruction`` and ``output`` (strings); a row that cannot be read
  or lacks one stops the load with :class:`InvalidRecordError` naming ``path:line`` and the problem,
  unless ``skip_invalid=True``, which skips it and reports it in :class:`SkipReport`;
* exact duplicates (same instruction, input and output after normalisation) are removed, first
  one kept, and counted;
* nothing is dropped silently: :class:`LoadResult` carries read / kept / skipped / duplicate counts.

A reference is ``NAME``, ``NAME:SUBSET`` (a registered dataset) or a path to a file or folder
(JSON, JSONL, CSV, Parquet, or a ``datasets`` folder saved with ``save_to_disk``).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..records import InvalidRecordError, Record, VichatError, is_nfc, nfc
from ..specs import DEFAULT_FIELD_MAP, DatasetSpec, Row
from .language import detect_language
from .readers import Unreadable, read_rows

#: How many locations a skip report keeps (the first ones, in file order).
MAX_EXAMPLES = 5
#: How many records language detection looks at when a dataset's language is not known.
DETECT_SAMPLE = 200

# Records need an instruction and a response to be trained on; the hint says so and names the flag.
# The default suits the commands that call load() themselves (`vichat data show`, `stats`): they have
# --skip-invalid. A caller without that flag passes its own ``invalid_hint`` (see vichat.data.prepare).
_REQUIRED_HINT = "fix the record, or pass --skip-invalid to skip invalid records and report them"


@dataclass
class SkipReport:
    """Records skipped with ``skip_invalid=True``: count, reasons with counts, first locations."""

    count: int = 0
    reasons: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    #: Every skipped row as (location, problem): `vichat data prepare` writes them to skipped.jsonl.
    entries: list[tuple[str, str]] = field(default_factory=list)

    def add(self, location: str, problem: str) -> None:
        self.count += 1
        self.reasons[_reason_key(problem)] += 1
        self.entries.append((location, problem))
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{location}: {problem}")

    def merge(self, other: "SkipReport") -> None:
        self.count += other.count
        self.reasons.update(other.reasons)
        self.entries.extend(other.entries)
        self.examples.extend(other.examples[: MAX_EXAMPLES - len(self.examples)])

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "reasons": dict(self.reasons.most_common()), "first": list(self.examples)}

    def describe(self) -> str:
        """One paragraph for people: ``skipped 4 invalid records: empty 'output' (4); first at: ...``."""
        if not self.count:
            return "skipped 0 invalid records"
        reasons = "; ".join(f"{r} ({n})" for r, n in self.reasons.most_common())
        return f"skipped {self.count} invalid records: {reasons}; first: " + " | ".join(self.examples)


def _reason_key(problem: str) -> str:
    # Group "invalid JSON: ... at column 7" and "... at column 9" under one reason.
    return re.sub(r" at column \d+", "", problem)


@dataclass
class LoadResult:
    """The records of one dataset and the account of everything read."""

    name: str
    source: str
    records: list[Record]
    read: int = 0
    skipped: SkipReport = field(default_factory=SkipReport)
    duplicates_removed: int = 0
    non_nfc: int = 0
    language: str = ""
    path: str | None = None

    @property
    def kept(self) -> int:
        return len(self.records)

    @property
    def skipped_invalid(self) -> int:
        return self.skipped.count

    def counts(self) -> dict[str, int]:
        """``read``, ``kept``, ``skipped_invalid``, ``duplicates_removed``, ``non_nfc``."""
        return {
            "read": self.read,
            "kept": self.kept,
            "skipped_invalid": self.skipped_invalid,
            "duplicates_removed": self.duplicates_removed,
            "non_nfc": self.non_nfc,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "path": self.path,
            "language": self.language,
            **self.counts(),
            "skipped": self.skipped.to_dict(),
        }

    def summary(self) -> str:
        """One line: ``vi-alpaca: read 51052, kept 51052, skipped 0 invalid, 0 duplicates removed ...``."""
        line = (
            f"{self.name}: read {self.read}, kept {self.kept}, skipped {self.skipped_invalid} invalid, "
            f"removed {self.duplicates_removed} duplicates, normalised {self.non_nfc} non-NFC records to NFC"
        )
        if self.skipped.count:
            line += "\n  " + self.skipped.describe()
        return line


# --------------------------------------------------------------------------- resolving references


def _registry(registry: Any, ref: str) -> Any:
    """The caller's plugin registry: names become specs at the edge (the CLI and the app pass
    theirs), so this layer never builds one."""
    if registry is None:
        raise VichatError(f"{ref!r} is a dataset name, and names are looked up in a plugin registry: pass "
                          "registry=vichat.plugins.get_registry() (or a path to a data file)")
    return registry


def looks_like_path(ref: str) -> bool:
    """True for references that can only be paths (a separator, a data-file suffix, ``.``/``~``)."""
    return "/" in ref or "\\" in ref or ref.startswith((".", "~")) or ref.lower().endswith(
        (".json", ".jsonl", ".csv", ".parquet")
    )


def resolve(ref: str, registry: Any = None) -> tuple[DatasetSpec | None, Path | None, str | None]:
    """``(spec, path, subset)`` for a reference: ``NAME``, ``NAME:SUBSET`` or a path.

    A registered name wins over a same-named file in the current folder (write ``./alpaca`` for
    the file); anything that looks like a path (a separator, a data-file suffix) is a path.
    """
    name, _, subset = ref.partition(":")
    reg = None if looks_like_path(ref) else _registry(registry, ref)
    if reg is not None and name in reg.names("datasets"):
        spec = reg.dataset(name)
        check_subset(spec, subset or None)
        return spec, None, subset or None
    candidate = Path(ref).expanduser()
    if candidate.exists():
        return None, candidate, None
    if looks_like_path(ref) or reg is None:
        raise VichatError(f"{ref}: no such file or folder (and not a registered dataset name)")
    reg.dataset(name)  # raises UnknownNameError with suggestions
    raise AssertionError("unreachable")  # pragma: no cover


def is_dataset_name(ref: str, registry: Any = None) -> bool:
    """True when ``ref`` (``NAME`` or ``NAME:SUBSET``) names a registered dataset, not a path."""
    return not looks_like_path(ref) and ref.partition(":")[0] in _registry(registry, ref).names("datasets")


def check_subset(spec: DatasetSpec, subset: str | None) -> None:
    """Raise a :class:`VichatError` listing the valid subsets when ``subset`` is not one of them."""
    if subset and subset not in spec.subsets:
        valid = ", ".join(spec.subsets) if spec.subsets else "none"
        raise VichatError(f"dataset {spec.name!r} has no subset {subset!r} (its subsets: {valid})")


# --------------------------------------------------------------------------- loading


def load(
    ref: str,
    *,
    path: str | Path | None = None,
    subset: str | None = None,
    skip_invalid: bool = False,
    dedupe: bool = True,
    language: str | None = None,
    registry: Any = None,
    invalid_hint: str | None = None,
) -> LoadResult:
    """Load ``ref`` (a registered ``NAME[:SUBSET]`` or a path) into a :class:`LoadResult`.

    :param path: a local file or folder for a registered dataset (instead of fetching its source).
    :param subset: a subset of a registered dataset (same as ``NAME:SUBSET``).
    :param skip_invalid: skip and report invalid records instead of stopping at the first one.
    :param dedupe: remove exact duplicates (counted in ``duplicates_removed``).
    :param language: force the records' language instead of the dataset's or a detected one.
    :param invalid_hint: what the error for an invalid record tells the user to do (default: fix it
        or pass ``--skip-invalid``; a command without that flag passes advice that applies to it).
    :raises InvalidRecordError: on the first invalid record when ``skip_invalid`` is false.
    :raises VichatError: unknown name, missing file, or public data that cannot be fetched.
    """
    spec, ref_path, ref_subset = resolve(ref, registry)
    subset = subset or ref_subset
    if spec is None:
        if path is not None:
            raise VichatError(f"{ref} is a path; --path is only for registered dataset names")
        assert ref_path is not None
        source = re.sub(r"[^a-z0-9._-]+", "-", ref_path.stem.lower()).strip("-") or "data"
        return load_items(read_rows(ref_path), name=str(ref_path), source=source, skip_invalid=skip_invalid,
                          dedupe=dedupe, language=language, path=str(ref_path), invalid_hint=invalid_hint)
    check_subset(spec, subset)
    if path is not None and not Path(path).expanduser().exists():
        raise VichatError(f"{path}: no such file or folder (given for dataset {spec.name!r})")
    local = Path(path).expanduser() if path is not None else None
    items = spec.load(local, subset=subset)
    if language is None and len(spec.languages) == 1:
        language = spec.languages[0]
    source = spec.name if not subset else f"{spec.name}:{subset}"
    return load_items(items, name=source, source=source, field_map=spec.field_map, skip_invalid=skip_invalid,
                      dedupe=dedupe, language=language, path=str(local) if local else None,
                      invalid_hint=invalid_hint)


def load_items(
    items: Iterable[Row | Record],
    *,
    name: str,
    source: str,
    field_map: Mapping[str, Sequence[str]] = DEFAULT_FIELD_MAP,
    skip_invalid: bool = False,
    dedupe: bool = True,
    language: str | None = None,
    path: str | None = None,
    invalid_hint: str | None = None,
) -> LoadResult:
    """Validate and normalise raw rows (or records) into a :class:`LoadResult`.

    Ids: a row's own id (through ``field_map["id"]``) is kept; otherwise ``f"{source}-{index}"``
    with ``index`` the 0-based position among the rows read, so ids do not shift when an earlier
    record is skipped or removed as a duplicate.
    """
    aliases = {
        key: tuple(field_map.get(key, DEFAULT_FIELD_MAP.get(key, ())))
        for key in ("instruction", "input", "output", "id")
    }
    skipped = SkipReport()
    seen: set[tuple[str, str, str]] = set()
    kept: list[tuple[str, str, str, str, str | None]] = []  # id, instruction, input, output, language
    read = duplicates = non_nfc = 0
    for index, item in enumerate(items):
        read += 1
        if isinstance(item, Record):
            location, data = f"{source}:{index + 1}", item.to_dict()
        else:
            location, data = item.location, item.data
        if any(isinstance(v, str) and not is_nfc(v) for v in _values(data)):
            non_nfc += 1
        fields, problem = _normalise(data, aliases)
        if problem is not None:
            if not skip_invalid:
                raise InvalidRecordError(location, problem, invalid_hint or _REQUIRED_HINT)
            skipped.add(location, problem)
            continue
        instruction, input_, output, rid, lang = fields
        key = (instruction, input_, output)
        if dedupe:
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
        kept.append((rid or f"{source}-{index}", instruction, input_, output, lang))
    if language is None:
        language = detect_language(r[1] + "\n" + r[3] for r in kept[:DETECT_SAMPLE])
    records = [
        Record(id=rid, instruction=ins, input=inp, output=out, source=source, language=lang or language)
        for rid, ins, inp, out, lang in kept
    ]
    return LoadResult(name=name, source=source, records=records, read=read, skipped=skipped,
                      duplicates_removed=duplicates, non_nfc=non_nfc, language=language, path=path)


def _values(data: Any) -> Iterable[Any]:
    return () if isinstance(data, Unreadable) else data.values()


def _pick(data: Mapping[str, Any], names: Sequence[str]) -> tuple[str | None, Any]:
    for name in names:
        value = data.get(name)
        if value is not None:
            return name, value
    return None, None


def _normalise(data: Any, aliases: Mapping[str, Sequence[str]]) -> tuple[Any, str | None]:
    """``((instruction, input, output, id, language), None)`` or ``(None, problem)``."""
    if isinstance(data, Unreadable):
        return None, f"unreadable row: {data.problem}"
    out: dict[str, str] = {}
    for key in ("instruction", "output", "input"):
        found, value = _pick(data, aliases[key])
        if found is None:
            if key == "input":
                out[key] = ""
                continue
            return None, f"missing {key!r} (looked for {', '.join(repr(a) for a in aliases[key])})"
        if not isinstance(value, str):
            return None, f"{found!r} is {type(value).__name__}, expected text"
        text = nfc(value).strip()
        if not text and key != "input":
            return None, f"empty {found!r}"
        out[key] = text
    _, rid = _pick(data, aliases["id"])
    rid = nfc(str(rid)).strip() if rid is not None and not isinstance(rid, (dict, list)) else ""
    lang = data.get("language") or data.get("lang")
    lang = lang.strip().lower() if isinstance(lang, str) and lang.strip() else None
    return (out["instruction"], out["input"], out["output"], rid, lang), None
