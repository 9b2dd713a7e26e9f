"""Generic readers: JSON, JSONL, CSV, Parquet and ``datasets`` folders saved with ``save_to_disk``.

Each yields :class:`vichat.specs.Row` items carrying ``"path:line"`` (JSONL, CSV), ``"path:line (item N)"``
(a JSON array) or ``"path:row N"`` (Parquet, Arrow) so an error can point at the bad record.
A line that is not valid JSON yields a Row whose ``data`` is an :class:`Unreadable` marker, so the
caller decides between stopping and ``--skip-invalid``; nothing is dropped here.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..records import VichatError
from ..specs import Row

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class Unreadable:
    """Stands in for a row that could not be parsed; ``problem`` says why."""

    problem: str
    text: str = ""

    def get(self, key: str, default: Any = None) -> Any:  # behaves like an empty mapping
        return default


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and (
        (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or (path / "state.json").exists()
    )


def data_files(path: Path) -> list[Path]:
    """The readable files of a folder (sorted), or the file itself."""
    if path.is_file():
        return [path]
    if not path.exists():
        raise VichatError(f"{path}: no such file or folder")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise VichatError(
            f"{path}: no data files found (expected {', '.join(SUFFIXES)}, or a folder saved with "
            "datasets' save_to_disk)"
        )
    return files


def read_rows(path: str | Path) -> Iterator[Row]:
    """Read every row of a file or folder, in order."""
    path = Path(path)
    if is_saved_dataset(path):
        yield from _read_saved(path)
        return
    for file in data_files(path):
        suffix = file.suffix.lower()
        if suffix == ".jsonl":
            yield from _read_jsonl(file)
        elif suffix == ".json":
            yield from _read_json(file)
        elif suffix == ".csv":
            yield from _read_csv(file)
        elif suffix == ".parquet":
            yield from _read_parquet(file)
        else:
            raise VichatError(f"{file}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)}")


def bundled_rows(name: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, row)`` for every row of the JSONL file ``name`` shipped in ``vichat/data/`` (e.g.
    ``sample/general.jsonl``). The files are part of vichat, so a missing file or a bad line is an
    error naming ``vichat/data/<name>:<line>`` (reinstall vichat), never a skipped row."""
    from importlib import resources

    where = f"vichat/data/{name}"
    res = resources.files("vichat.data").joinpath(name)
    if not res.is_file():
        raise VichatError(f"the bundled file {where} is missing; reinstall vichat")
    for row in _read_jsonl(Path(str(res))):
        lineno = int(row.location.rsplit(":", 1)[1])
        if isinstance(row.data, Unreadable):
            problem = row.data.problem.replace("invalid JSON: ", "not valid JSON: ", 1)
            raise VichatError(f"{where}:{lineno}: {problem}")
        yield lineno, row.data


def _json_problem(exc: json.JSONDecodeError) -> str:
    """``exc``'s message and column (json's "Invalid control character at" already ends in "at")."""
    msg = exc.msg[:-3] if exc.msg.endswith(" at") else exc.msg
    return f"{msg} at column {exc.colno}"


def _read_jsonl(file: Path) -> Iterator[Row]:
    # utf-8-sig: a byte-order mark at the start (Windows editors, Excel exports) is skipped, as for CSV.
    with open(file, encoding="utf-8-sig", errors="strict") as fh:
        lineno = 0
        while True:
            try:
                line = fh.readline()
            except UnicodeDecodeError as exc:
                raise VichatError(f"{file}:{lineno + 1}: not UTF-8 text ({exc.reason}); re-encode the file as UTF-8") from exc
            if not line:
                break
            lineno += 1
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Row(f"{file}:{lineno}", Unreadable(f"invalid JSON: {_json_problem(exc)}", line[:200]))
                continue
            if not isinstance(data, dict):
                yield Row(f"{file}:{lineno}", Unreadable(f"expected a JSON object, got {type(data).__name__}", line[:200]))
                continue
            yield Row(f"{file}:{lineno}", data)


def _read_json(file: Path) -> Iterator[Row]:
    try:
        text = file.read_text(encoding="utf-8-sig")  # a leading byte-order mark is skipped
    except UnicodeDecodeError as exc:
        raise VichatError(f"{file}: not UTF-8 text ({exc.reason}); re-encode the file as UTF-8") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # A .json file holding JSON Lines is common enough to accept.
        if text.lstrip().startswith("{") and "\n" in text.strip():
            yield from _read_jsonl(file)
            return
        raise VichatError(f"{file}:{exc.lineno}: invalid JSON: {_json_problem(exc)}") from exc
    if isinstance(data, list):
        yield from _array_rows(file, text, data)
        return
    if isinstance(data, dict):
        # {"data": [...]} / {"train": [...]} wrappers
        lists = [v for v in data.values() if isinstance(v, list)]
        if not lists and len(data) == 1 and next(iter(data)) in WRAPPER_KEYS:
            # {"data": {...}}: a wrapper whose records are not a list, not one record named "data"
            key, value = next(iter(data.items()))
            raise VichatError(f"{file}: {key!r} is a JSON {_json_type(value)}, not a list of records; expected "
                              f'{{"{key}": [{{"instruction": ..., "output": ...}}, ...]}} or a JSON array of records')
        items = lists[0] if len(lists) == 1 else [data]
        for i, item in enumerate(items):
            yield _json_item(f"{file}:(item {i})", item)
        return
    raise VichatError(f"{file}: expected a JSON array of objects, got {type(data).__name__}")


def _array_rows(file: Path, text: str, data: list) -> Iterator[Row]:
    """Rows of a top-level JSON array, each located by the line its object starts on."""
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line = text.count("\n", 0, pos) + 1
    for i, item in enumerate(data):
        while text[pos] in " \t\r\n,":
            if text[pos] == "\n":
                line += 1
            pos += 1
        _, end = decoder.raw_decode(text, pos)
        yield _json_item(f"{file}:{line} (item {i})", item)
        line += text.count("\n", pos, end)
        pos = end


#: Keys that wrap a file's records (``{"data": [...]}``, Hugging Face's ``{"train": [...]}``).
WRAPPER_KEYS = frozenset({"data", "train", "validation", "test", "records", "rows", "examples", "instances", "items"})


def _json_type(value: Any) -> str:
    names = {dict: "object", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _json_item(location: str, item: Any) -> Row:
    if isinstance(item, dict):
        return Row(location, item)
    return Row(location, Unreadable(f"expected a JSON object, got {type(item).__name__}", str(item)[:200]))


def _read_csv(file: Path) -> Iterator[Row]:
    with open(file, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        for row in reader:
            loc = f"{file}:{reader.line_num}"
            if None in row:
                yield Row(loc, Unreadable("more fields than the header has columns", str(row.get(None))[:200]))
                continue
            yield Row(loc, {k: v for k, v in row.items() if k is not None})


def _read_parquet(file: Path) -> Iterator[Row]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(file)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
        raise VichatError(f"{file}: not a readable Parquet file ({exc})") from exc
    i = 0
    for batch in pf.iter_batches(batch_size=2048):
        for item in batch.to_pylist():
            i += 1
            yield Row(f"{file}:row {i}", item)


def _read_saved(path: Path) -> Iterator[Row]:
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(path))
    splits = ds.items() if isinstance(ds, DatasetDict) else [("", ds)]
    for split, part in splits:
        prefix = f"{path}[{split}]" if split else str(path)
        for i, item in enumerate(part):
            yield Row(f"{prefix}:row {i + 1}", item)
