"""``vichat data prepare``: write a normalised, mixed, split training set that training reads.

Output folder::

    DIR/train.jsonl        one Record.to_json() per line
    DIR/validation.jsonl   same format (may be empty with --val-size 0)
    DIR/manifest.json      what was built from what: sources and their counts, seed, template,
                           skipped / duplicate / quality-screen report, and the sha256 of each output file
    DIR/skipped.jsonl      every record left out, one per line with where and why: invalid rows, and
                           records the quality screen dropped (broken code, untranslated)

Every file is written to a temporary name in DIR and renamed into place (atomic on POSIX), and the
manifest is written last: a folder with a manifest always has complete, matching data files.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..records import InvalidRecordError, Record, VichatError
from .mixtures import Mixture, MixtureResult, SourceResult, adhoc_mixture, build_mixture, get_mixture

FORMAT = "vichat-prepared/1"
TRAIN_FILE, VALIDATION_FILE, MANIFEST_FILE = "train.jsonl", "validation.jsonl", "manifest.json"
SKIPPED_FILE = "skipped.jsonl"

#: What an invalid record's error advises when the caller gives no advice of its own. It must hold for
#: every command that reaches :func:`prepare`: `vichat data prepare` (which has --skip-invalid) and
#: `vichat train --data FILE` (which prepares the file itself and has no such flag).
INVALID_HINT = ("fix or remove the record, or leave invalid records out with `vichat data prepare --skip-invalid "
                "--out DIR`, which lists them in DIR/skipped.jsonl and writes a folder `vichat train --data DIR` "
                "trains on")


@dataclass(frozen=True)
class FileInfo:
    """What was written: file name, record count, size and sha256."""

    name: str
    records: int
    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"records": self.records, "bytes": self.bytes, "sha256": self.sha256}


def parse_val_size(value: str | float | int) -> float | int:
    """``"0.02"`` → a fraction (0 <= f < 1); ``"200"`` → a count. Errors name the flag."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        raise VichatError(f"--val-size {value!r}: expected a fraction such as 0.02 or a count such as 500") from None
    if number < 0:
        raise VichatError(f"--val-size {value!r} must not be negative")
    if "." in text or "e" in text.lower() or isinstance(value, float):
        if number >= 1:
            raise VichatError(f"--val-size {value!r}: a fraction must be below 1 (or give a whole count)")
        return number
    return int(number)


def validation_count(total: int, val_size: float | int) -> int:
    """How many of ``total`` records go to validation: a count as given, a fraction rounded (at
    least 1 when the fraction is positive and there are 2 or more records)."""
    if isinstance(val_size, int):
        n = val_size
    else:
        n = round(total * val_size)
        if val_size > 0 and total >= 2:
            n = max(n, 1)
    if n >= total and total > 0 and n > 0:
        raise VichatError(
            f"--val-size {val_size}: {n} validation records would leave none of the {total} for training"
        )
    return n


def write_jsonl_atomic(path: Path, records: Iterable[Record]) -> FileInfo:
    """Write ``records`` as JSON Lines to ``path`` atomically; return its count, size and sha256."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    digest, size, count = hashlib.sha256(), 0, 0
    try:
        with open(tmp, "wb") as fh:
            for record in records:
                line = (record.to_json() + "\n").encode("utf-8")
                fh.write(line)
                digest.update(line)
                size += len(line)
                count += 1
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return FileInfo(path.name, count, size, digest.hexdigest())


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (a temporary file, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as indented UTF-8 JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


def prepare(
    out: str | Path,
    *,
    mixture: str | Mixture | None = None,
    datasets: Sequence[str] = (),
    sources: Mapping[str, str] | None = None,
    limits: Mapping[str, int] | None = None,
    val_size: float | int | str = 0.02,
    seed: int = 42,
    skip_invalid: bool = False,
    template: str | None = None,
    keep_corrupted_code: bool = False,
    drop_untranslated: bool = False,
    registry: Any = None,
    invalid_hint: str | None = None,
) -> dict[str, Any]:
    """Build a mixture (``mixture`` or ad hoc from ``datasets``), split it, write it; return the manifest.

    The validation set is the first ``n`` records of the seeded shuffle, the rest is training.
    Records whose code the translation broke are dropped unless ``keep_corrupted_code``; with
    ``drop_untranslated`` records that look untranslated are dropped too (see
    :func:`vichat.data.mixtures.screen_records`). Both are counted and listed in skipped.jsonl.

    :param invalid_hint: the advice an invalid record's error gives (default :data:`INVALID_HINT`,
        right for `vichat data prepare` and for `vichat train --data FILE` alike).
    :raises InvalidRecordError: on the first invalid record unless ``skip_invalid``.
    :raises VichatError: when no record is left to write; the message says why for each source.
    """
    if (mixture is None) == (not datasets):
        raise VichatError("pass either --mixture NAME or one or more --dataset NAME_OR_PATH (not both)")
    if mixture is not None:
        mix = get_mixture(mixture) if isinstance(mixture, str) else mixture
        if template:
            mix = Mixture(mix.name, mix.description, template, mix.sources)
    else:
        mix = adhoc_mixture(datasets, template or "chat")
    val = parse_val_size(val_size)
    try:
        result: MixtureResult = build_mixture(
            mix, sources=sources, limits=limits, seed=seed, skip_invalid=skip_invalid,
            keep_corrupted_code=keep_corrupted_code, drop_untranslated=drop_untranslated, registry=registry,
        )
    except InvalidRecordError as exc:
        raise InvalidRecordError(exc.location, exc.problem, invalid_hint or INVALID_HINT) from None
    if not result.records:
        raise VichatError(_no_records_message(result, named=mixture is not None))
    records = result.records
    n_val = validation_count(len(records), val)
    out_dir = Path(out).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    train = write_jsonl_atomic(out_dir / TRAIN_FILE, records[n_val:])
    validation = write_jsonl_atomic(out_dir / VALIDATION_FILE, records[:n_val])
    manifest = {
        "format": FORMAT,
        "mixture": mix.name,
        "description": mix.description,
        "template": mix.template,
        "seed": seed,
        "val_size": val,
        "skip_invalid": skip_invalid,
        "keep_corrupted_code": keep_corrupted_code,
        "drop_untranslated": drop_untranslated,
        "counts": {
            **result.counts(),
            "train": train.records,
            "validation": validation.records,
            "ids_renamed": result.ids_renamed,
        },
        "sources": [s.to_dict() for s in result.sources],
        "skipped": result.skipped.to_dict(),
        "files": {f.name: f.to_dict() for f in (train, validation)},
        "record_fields": ["id", "instruction", "input", "output", "source", "language"],
    }
    skipped_path = out_dir / SKIPPED_FILE
    # Every record left out, not only the first few the summary shows: nothing is dropped unseen.
    lines = [json.dumps({"location": loc, "kind": "invalid", "problem": prob}, ensure_ascii=False)
             for loc, prob in result.skipped.entries]
    lines += [json.dumps(s.entry(src.key), ensure_ascii=False) for src in result.sources for s in src.screened if not s.kept]
    manifest["screen"] = _screen_summary(result)
    if lines:
        write_text_atomic(skipped_path, "\n".join(lines) + "\n")
        manifest["skipped"]["file"] = SKIPPED_FILE
        manifest["screen"]["file"] = SKIPPED_FILE
    else:
        skipped_path.unlink(missing_ok=True)  # a stale list from an earlier run would mislead
    write_json_atomic(out_dir / MANIFEST_FILE, manifest)
    return manifest


def _why_empty(src: SourceResult) -> str:
    """Why one source gave no record, in words that hold whichever command prepared it."""
    load = src.load
    if load.read == 0:
        return "it holds no records (an empty file or folder?); add instruction/output records to it"
    if load.kept == 0:
        if load.skipped_invalid:
            return (f"all {load.read} records are invalid and were skipped ({load.skipped.describe()}); "
                    "fix them (each needs a non-empty instruction and output)")
        return f"none of its {load.read} records could be used"
    screened = src.dropped_by_screen
    if screened and screened >= load.kept:
        return (f"the quality screen dropped all {load.kept} records (code broken by translation, or untranslated "
                "text; listed in skipped.jsonl; `vichat data prepare --keep-corrupted-code` keeps broken code)")
    if src.duplicates_across and src.duplicates_across + screened >= load.kept:
        return f"all its {load.kept} records repeat records of an earlier source"
    if src.limit == 0:
        return f"its limit is 0 (--limit {src.key}=0)"
    return f"no record left of the {load.read} read"


def _no_records_message(result: MixtureResult, *, named: bool) -> str:
    """The error for an empty result: the mixture when the user named one (``--mixture chat``), else
    the data itself (``--dataset FILE``, ``vichat train --data FILE``), with what each source lacked."""
    reasons = [(src, _why_empty(src)) for src in result.sources]
    if named:
        detail = "; ".join(f"source {src.key!r} ({src.path or src.dataset}): {why}" for src, why in reasons)
        return f"mixture {result.name!r} has no records to write: {detail}"
    if len(reasons) == 1:
        src, why = reasons[0]
        return f"{src.path or src.dataset}: no records to use: {why}"
    detail = "; ".join(f"{src.path or src.dataset}: {why}" for src, why in reasons)
    return f"no records to use from {', '.join(str(s.path or s.dataset) for s, _ in reasons)}: {detail}"


def _screen_summary(result: MixtureResult) -> dict[str, Any]:
    """Counts and first examples of what the quality screen found (dropped or kept)."""
    out: dict[str, Any] = {}
    for kind in ("corrupted_code", "untranslated"):
        found = [(src.key, s) for src in result.sources for s in src.screened if s.kind == kind]
        out[kind] = {
            "dropped": sum(1 for _, s in found if not s.kept),
            "kept": sum(1 for _, s in found if s.kept),
            "first": [f"{key}: id {s.record.id}: {s.reason}"[:200] for key, s in found[:3]],
        }
    return out


def read_manifest(folder: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read ``folder/manifest.json``; with ``verify``, check each file's sha256 against it."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.exists():
        raise VichatError(f"{folder}: no {MANIFEST_FILE}; build the folder with `vichat data prepare --out {folder}`")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if verify:
        for name, info in manifest.get("files", {}).items():
            digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
            if digest != info["sha256"]:
                raise VichatError(f"{folder / name}: sha256 differs from {MANIFEST_FILE}; re-run `vichat data prepare`")
    return manifest


def summarise(manifest: Mapping[str, Any]) -> str:
    """Lines for people: one per source, then the totals and the files."""
    lines = [f"mixture {manifest['mixture']} (template {manifest['template']}, seed {manifest['seed']})"]
    for s in manifest["sources"]:
        where = f" from {s['path']}" if s.get("path") and s["path"] != s["dataset"] else ""
        lines.append(
            f"  {s['key']}: {s['dataset']}{where}: read {s['read']}, kept {s['kept']}, "
            f"skipped {s['skipped_invalid']} invalid, removed {s['duplicates_removed']} duplicates"
            f" (+{s['duplicates_across_sources']} across sources), used {s['used']}"
            + (f" (limit {s['limit']})" if s["limit"] is not None else "")
        )
        if s["skipped"]["count"]:
            reasons = "; ".join(f"{r} ({n})" for r, n in s["skipped"]["reasons"].items())
            lines.append(f"    skipped: {reasons}; first: " + " | ".join(s["skipped"]["first"]))
        screen = [f"{s.get(k, 0)} {what}" for k, what in (
            ("dropped_corrupted_code", "dropped for code broken by translation"),
            ("kept_corrupted_code", "kept with code broken by translation (--keep-corrupted-code)"),
            ("dropped_untranslated", "dropped as untranslated (--drop-untranslated)"),
        ) if s.get(k)]
        if screen:
            lines.append("    quality: " + ", ".join(screen))
    for kind, info in manifest.get("screen", {}).items():
        if isinstance(info, dict) and info.get("first"):
            lines.append(f"  first {kind.replace('_', ' ')}: " + " | ".join(info["first"]))  # the manifest's first 3
    c = manifest["counts"]
    lines.append(f"  total: {c['records']} records -> train {c['train']}, validation {c['validation']}")
    for name, info in manifest["files"].items():
        lines.append(f"  {name}: {info['records']} records, sha256 {info['sha256'][:16]}…")
    return "\n".join(lines)
