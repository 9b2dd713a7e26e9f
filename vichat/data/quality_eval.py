"""Measure the broken-code detector (:mod:`vichat.data.quality`) against hand-made labels.

A label file is JSON Lines, one labelled record of a public data file per line::

    {"line": 4188, "sha256": "1f0c…", "label": "corrupted", "note": "Python: 'cho x trong ...'"}

``line`` is the 1-based line of the data file, ``sha256`` the first 12 hex digits of the SHA-256 of
that line (so a changed data file is noticed instead of silently scoring other records), ``label``
is ``corrupted``, ``clean`` or ``unsure`` (left out of the scores), and ``note`` says why. The text
itself is read from the data file: the labels never copy it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

from ..records import VichatError, nfc
from ..specs import DEFAULT_FIELD_MAP
from .quality import CodeHit, record_code_problems

LABELS = ("corrupted", "clean", "unsure")


def line_hash(line: str) -> str:
    """The short hash a label stores for its data line (without the newline)."""
    return hashlib.sha256(line.rstrip("\n").encode("utf-8")).hexdigest()[:12]


def as_fields(row: Mapping[str, Any]) -> dict[str, str]:
    """``instruction`` / ``input`` / ``output`` of a raw row (``prompt`` / ``response`` accepted), NFC."""
    out = {}
    for key in ("instruction", "input", "output"):
        value = next((row[a] for a in DEFAULT_FIELD_MAP[key] if isinstance(row.get(a), str)), "")
        out[key] = nfc(value)
    return out


@dataclass
class Evaluation:
    """Confusion counts, the scores, and the records behind every error."""

    true_positive: int = 0
    false_positive: int = 0
    false_negative: int = 0
    true_negative: int = 0
    unsure: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def precision(self) -> float:
        flagged = self.true_positive + self.false_positive
        return self.true_positive / flagged if flagged else 1.0

    @property
    def recall(self) -> float:
        positives = self.true_positive + self.false_negative
        return self.true_positive / positives if positives else 1.0

    @property
    def scored(self) -> int:
        return self.true_positive + self.false_positive + self.false_negative + self.true_negative

    def lines(self) -> list[str]:
        """The report printed by bench/quality.py."""
        out = [
            f"labelled records scored: {self.scored} "
            f"({self.true_positive + self.false_negative} corrupted, {self.false_positive + self.true_negative} clean; "
            f"{self.unsure} unsure left out)",
            f"precision {self.precision:.3f} ({self.true_positive}/{self.true_positive + self.false_positive})",
            f"recall    {self.recall:.3f} ({self.true_positive}/{self.true_positive + self.false_negative})",
        ]
        for e in self.errors:
            out.append(f"  {e['kind']} line {e['line']}: {e['note']}" + (f" | {e['hits']}" if e["hits"] else ""))
        return out


def read_labels(path: str | Path) -> list[dict[str, Any]]:
    """The label file's entries; a malformed one raises naming ``path:line``."""
    entries = []
    with open(path, encoding="utf-8") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
                ok = isinstance(entry.get("line"), int) and entry.get("label") in LABELS and isinstance(entry.get("sha256"), str)
            except (json.JSONDecodeError, AttributeError):
                ok = False
            if not ok:
                raise VichatError(f"{path}:{n}: expected {{\"line\": N, \"sha256\": \"…\", \"label\": {'|'.join(LABELS)}, \"note\": …}}")
            entries.append(entry)
    return entries


def labelled_rows(labels: Iterable[Mapping[str, Any]], data: str | Path) -> Iterator[tuple[Mapping[str, Any], dict[str, str]]]:
    """``(label, fields)`` for each label, the text read from ``data``; a hash mismatch raises."""
    wanted = {int(entry["line"]): entry for entry in labels}
    found = 0
    with open(data, encoding="utf-8") as fh:
        for n, raw in enumerate(fh, 1):
            entry = wanted.get(n)
            if entry is None:
                continue
            if line_hash(raw) != entry["sha256"]:
                raise VichatError(
                    f"{data}:{n}: the line differs from the one labelled (sha256 {line_hash(raw)} != {entry['sha256']}); "
                    "the data file changed: relabel or use the file the labels were made on"
                )
            found += 1
            yield entry, as_fields(json.loads(raw))
    if found != len(wanted):
        raise VichatError(f"{data}: has fewer lines than the labels refer to ({found} of {len(wanted)} found)")


def evaluate(labels_path: str | Path, data: str | Path) -> Evaluation:
    """Run the detector on every labelled record of ``data`` and score it against the labels."""
    result = Evaluation()
    for entry, fields in labelled_rows(read_labels(labels_path), data):
        if entry["label"] == "unsure":
            result.unsure += 1
            continue
        hits: list[CodeHit] = record_code_problems(fields)
        truth, said = entry["label"] == "corrupted", bool(hits)
        if truth and said:
            result.true_positive += 1
        elif truth:
            result.false_negative += 1
        elif said:
            result.false_positive += 1
        else:
            result.true_negative += 1
        if truth != said:
            result.errors.append({
                "kind": "missed" if truth else "false alarm",
                "line": entry["line"],
                "note": entry.get("note", ""),
                "hits": "; ".join(h.describe() for h in hits[:2]),
            })
    return result
