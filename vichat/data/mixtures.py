"""Training mixtures: which datasets a model is trained on, as data.

The paper trains two kinds of model (section IV-A, Table II):

* ``chat``   = Alpaca + GPT4All     (Bloomz-Chat, GPTJ-Chat), ``chat`` template;
* ``doctor`` = Alpaca + ChatDoctor  (Bloomz-Doctor, GPTJ-Doctor), ``doctor`` template.

Each source has a *key* (``alpaca``, ``gpt4all``, ``chatdoctor``) that the command line uses:
``--limit alpaca=1000`` caps a source, ``--source alpaca=/path/file.jsonl`` replaces its data by a
local file or folder (read through the same dataset plugin) or by another registered dataset
(``--source alpaca=vi-sample-chat``). ``sample-chat`` and ``sample-doctor`` are the same mixtures
built from the bundled sample, for offline runs and tests.

Quality screen: before limits are applied, a Vietnamese record whose code the translation broke
(:mod:`vichat.data.quality`) is dropped unless ``keep_corrupted_code``; with ``drop_untranslated`` a
record that looks like untranslated English (:mod:`vichat.data.language`) is dropped too. Both are
counted per source and listed, with the reason, in the skip report.

Determinism: a limited source keeps a random subset drawn with ``Random(f"{seed}:{key}")``, and the
mixed records are shuffled with ``Random(seed)``; the same inputs and seed give the same order.
Records repeated across sources are removed (first source wins) and counted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..records import Record, VichatError
from ..specs import NAME_RE
from .loading import LoadResult, SkipReport, is_dataset_name, load, looks_like_path


@dataclass(frozen=True)
class MixtureSource:
    """One source of a mixture: a key for the command line, a dataset reference, an optional cap."""

    key: str
    dataset: str  # a registered ``NAME`` or ``NAME:SUBSET``
    limit: int | None = None


@dataclass(frozen=True)
class Mixture:
    """A named training mixture and the prompt template its models use."""

    name: str
    description: str
    template: str
    sources: tuple[MixtureSource, ...]

    def keys(self) -> list[str]:
        return [s.key for s in self.sources]


MIXTURES: dict[str, Mixture] = {
    m.name: m
    for m in (
        Mixture(
            "chat",
            "Alpaca + GPT4All in Vietnamese (the paper's Bloomz-Chat / GPTJ-Chat data)",
            "chat",
            (MixtureSource("alpaca", "vi-alpaca"), MixtureSource("gpt4all", "gpt4all:vi")),
        ),
        Mixture(
            "doctor",
            "Alpaca + ChatDoctor (the paper's Bloomz-Doctor / GPTJ-Doctor data)",
            "doctor",
            (MixtureSource("alpaca", "vi-alpaca"), MixtureSource("chatdoctor", "chatdoctor")),
        ),
        Mixture(
            "sample-chat",
            "The bundled Vietnamese general sample (offline stand-in for chat)",
            "chat",
            (MixtureSource("alpaca", "vi-sample-chat"),),
        ),
        Mixture(
            "sample-doctor",
            "The bundled general + medical samples (offline stand-in for doctor)",
            "doctor",
            (MixtureSource("alpaca", "vi-sample-chat"), MixtureSource("chatdoctor", "vi-sample-doctor")),
        ),
    )
}


@dataclass(frozen=True)
class Screened:
    """A record the quality screen dropped (or flagged and kept): why, in words a person can check."""

    record: Record
    kind: str  # "corrupted_code" | "untranslated"
    reason: str
    kept: bool = False

    def entry(self, key: str) -> dict[str, Any]:
        """The skipped.jsonl line: where (source key and record id), what kind, why."""
        return {"location": f"{key}: id {self.record.id}", "kind": self.kind, "problem": self.reason,
                "id": self.record.id, "source": key}


def screen_records(
    records: Sequence[Record], *, keep_corrupted_code: bool = False, drop_untranslated: bool = False
) -> tuple[list[Record], list[Screened]]:
    """``(kept, screened)``: Vietnamese records with broken code (unless kept) or, with
    ``drop_untranslated``, that look untranslated, go to ``screened`` with their reason."""
    from .language import record_looks_untranslated
    from .quality import describe_hits, record_code_problems

    kept: list[Record] = []
    screened: list[Screened] = []
    for r in records:
        if r.language == "vi":
            hits = record_code_problems(r)
            if hits:
                screened.append(Screened(r, "corrupted_code", "code broken by translation: " + describe_hits(hits),
                                         kept=keep_corrupted_code))
                if not keep_corrupted_code:
                    continue
            if drop_untranslated and record_looks_untranslated(f"{r.instruction}\n{r.input}", r.output):
                screened.append(Screened(r, "untranslated", "looks like untranslated English (no Vietnamese "
                                         "diacritics, English stop words)"))
                continue
        kept.append(r)
    return kept, screened


@dataclass
class SourceResult:
    """What one source contributed: its load account, the limit applied and the records used."""

    key: str
    dataset: str
    path: str | None
    load: LoadResult
    limit: int | None
    used: int = 0
    duplicates_across: int = 0
    screened: list[Screened] = field(default_factory=list)

    def screened_count(self, kind: str, kept: bool = False) -> int:
        return sum(1 for s in self.screened if s.kind == kind and s.kept == kept)

    @property
    def dropped_by_screen(self) -> int:
        return sum(1 for s in self.screened if not s.kept)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "dataset": self.dataset,
            "path": self.path,
            "limit": self.limit,
            "used": self.used,
            "duplicates_across_sources": self.duplicates_across,
            "dropped_corrupted_code": self.screened_count("corrupted_code"),
            "kept_corrupted_code": self.screened_count("corrupted_code", kept=True),
            "dropped_untranslated": self.screened_count("untranslated"),
            **self.load.to_dict(),
        }


@dataclass
class MixtureResult:
    """The mixed, shuffled records and the account of every source."""

    name: str
    template: str
    seed: int
    records: list[Record]
    sources: list[SourceResult] = field(default_factory=list)
    ids_renamed: int = 0

    @property
    def skipped(self) -> SkipReport:
        report = SkipReport()
        for s in self.sources:
            report.merge(s.load.skipped)
        return report

    def counts(self) -> dict[str, int]:
        return {
            "read": sum(s.load.read for s in self.sources),
            "skipped_invalid": sum(s.load.skipped_invalid for s in self.sources),
            "duplicates_removed": sum(s.load.duplicates_removed + s.duplicates_across for s in self.sources),
            "dropped_corrupted_code": sum(s.screened_count("corrupted_code") for s in self.sources),
            "kept_corrupted_code": sum(s.screened_count("corrupted_code", kept=True) for s in self.sources),
            "dropped_untranslated": sum(s.screened_count("untranslated") for s in self.sources),
            "dropped_by_limit": sum(
                s.load.kept - s.dropped_by_screen - s.duplicates_across - s.used for s in self.sources
            ),
            "records": len(self.records),
        }


def parse_assignments(values: Sequence[str], what: str) -> dict[str, str]:
    """``["alpaca=1000", ...]`` → ``{"alpaca": "1000"}``; a malformed item raises naming the flag."""
    out: dict[str, str] = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key.strip() or not rest.strip():
            raise VichatError(f"--{what} {value!r}: expected KEY=VALUE, e.g. --{what} alpaca=...")
        out[key.strip()] = rest.strip()
    return out


def parse_limits(values: Sequence[str] | Mapping[str, Any]) -> dict[str, int]:
    """``--limit`` values (``KEY=N``) as integers."""
    raw = dict(values) if isinstance(values, Mapping) else parse_assignments(values, "limit")
    limits: dict[str, int] = {}
    for key, value in raw.items():
        try:
            limits[key] = int(value)
        except (TypeError, ValueError):
            raise VichatError(f"--limit {key}={value}: the limit must be a whole number") from None
        if limits[key] < 0:
            raise VichatError(f"--limit {key}={value}: the limit must not be negative")
    return limits


def get_mixture(name: str) -> Mixture:
    """A built-in mixture by name (the error lists them)."""
    try:
        return MIXTURES[name]
    except KeyError:
        raise VichatError(f"no mixture named {name!r}; mixtures: {', '.join(MIXTURES)}") from None


def adhoc_mixture(refs: Sequence[str], template: str = "chat") -> Mixture:
    """A mixture of the given datasets (``REF`` or ``KEY=REF``); a path's key is its file stem."""
    sources: list[MixtureSource] = []
    for ref in refs:
        key, sep, rest = ref.partition("=")
        if sep and NAME_RE.match(key) and not Path(ref).exists():
            sources.append(MixtureSource(key, rest))
            continue
        if Path(ref).expanduser().exists() or looks_like_path(ref):
            key = "".join(c if c.isalnum() or c in "._-" else "-" for c in Path(ref).stem.lower()) or "data"
        else:
            key = ref.replace(":", "-")
        if key in {s.key for s in sources}:
            key = f"{key}-{len(sources) + 1}"
        sources.append(MixtureSource(key, ref))
    if not sources:
        raise VichatError("no datasets given: pass --mixture NAME or --dataset NAME_OR_PATH")
    return Mixture("+".join(s.key for s in sources), "ad hoc mixture", template, tuple(sources))


def build_mixture(
    mixture: Mixture | str,
    *,
    sources: Mapping[str, str] | None = None,
    limits: Mapping[str, int] | None = None,
    seed: int = 42,
    skip_invalid: bool = False,
    keep_corrupted_code: bool = False,
    drop_untranslated: bool = False,
    registry: Any = None,
) -> MixtureResult:
    """Load every source of ``mixture``, screen it, apply limits, remove cross-source duplicates, shuffle.

    :param sources: ``{key: path_or_dataset}`` replacing a source's data (``--source``).
    :param limits: ``{key: n}`` capping a source (``--limit``), on top of the mixture's own caps.
    :param keep_corrupted_code: keep records whose code translation broke (still counted).
    :param drop_untranslated: drop Vietnamese records that look like untranslated English.
    """
    mix = get_mixture(mixture) if isinstance(mixture, str) else mixture
    sources, limits = dict(sources or {}), dict(limits or {})
    for flag, given in (("source", sources), ("limit", limits)):
        unknown = sorted(set(given) - set(mix.keys()))
        if unknown:
            raise VichatError(
                f"--{flag} {unknown[0]}=...: mixture {mix.name!r} has no source {unknown[0]!r}; "
                f"its sources: {', '.join(mix.keys())}"
            )
    seen: set[tuple[str, str, str]] = set()
    results: list[SourceResult] = []
    mixed: list[Record] = []
    for src in mix.sources:
        override = sources.get(src.key)
        dataset, path = src.dataset, None
        if override is not None:
            if is_dataset_name(override, registry):
                dataset = override  # another registered dataset
            else:
                path = override  # a file or folder, read through the source's own plugin
        loaded = load(dataset, path=path, skip_invalid=skip_invalid, registry=registry)
        clean, screened = screen_records(
            loaded.records, keep_corrupted_code=keep_corrupted_code, drop_untranslated=drop_untranslated
        )
        # Only records actually used by an earlier source count as taken: a record that an earlier
        # source's limit left out stays available here.
        unique = [r for r in clean if (r.instruction, r.input, r.output) not in seen]
        across = len(clean) - len(unique)
        limit = limits.get(src.key, src.limit)
        if limit is not None and limit < len(unique):
            picked = sorted(random.Random(f"{seed}:{src.key}").sample(range(len(unique)), limit))
            unique = [unique[i] for i in picked]  # keeps file order within the source
        seen.update((r.instruction, r.input, r.output) for r in unique)
        results.append(SourceResult(src.key, dataset, path, loaded, limit, len(unique), across, screened))
        mixed.extend(unique)
    mixed, renamed = _unique_ids(mixed)  # before shuffling, so the later source is the renamed one
    random.Random(seed).shuffle(mixed)
    return MixtureResult(mix.name, mix.template, seed, mixed, results, renamed)


def _unique_ids(records: list[Record]) -> tuple[list[Record], int]:
    # Ids from different files can collide ("1", "2", ...); training and evaluation key on them,
    # so a repeated id is prefixed with its source (and counted in the manifest).
    seen: set[str] = set()
    out, renamed = [], 0
    for r in records:
        rid = r.id
        if rid in seen:
            base = f"{r.source}/{r.id}"
            rid, n = base, 2
            while rid in seen:
                rid, n = f"{base}-{n}", n + 1
            r = Record(rid, r.instruction, r.output, r.input, r.source, r.language, r.meta)
            renamed += 1
        seen.add(rid)
        out.append(r)
    return out, renamed

