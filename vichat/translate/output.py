"""Write translated records in input order, with no half-written line, and failures to a side file.

Records finish out of order (batches run concurrently), so finished records wait in memory until
every record before them is done. Lines go to ``OUTPUT.partial`` in whole-line ``write`` calls,
handed to the OS at least every quarter second (a killed process loses none of them), and the
file is fsynced and renamed to ``OUTPUT`` only when the job is complete: a reader never sees a
truncated OUTPUT. A resumed job rebuilds the output from the cache rather than trusting the
partial file, so the partial file is not fsynced along the way: that wait (tens of ms on a busy
disk, on the thread that commits and prepares the next requests) would buy nothing.
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping

from ..paths import existing_ancestor
from ..records import VichatError


def failed_path_for(output: str | Path) -> Path:
    """``data/vi.jsonl`` -> ``data/vi.failed.jsonl`` (other names get ``.failed.jsonl`` appended)."""
    output = Path(output)
    stem = output.name[: -len(".jsonl")] if output.name.endswith(".jsonl") else output.name
    return output.with_name(stem + ".failed.jsonl")


def partial_path_for(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".partial")


def _dumps(data: Mapping[str, Any]) -> bytes:
    return (json.dumps(data, ensure_ascii=False, default=str) + "\n").encode("utf-8")


class _Sink:
    """An unbuffered file taking whole lines; one ``write`` per burst keeps lines whole on kill."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = partial_path_for(path)
        self.fh = open(self.partial, "wb", buffering=0)
        self.buffer: list[bytes] = []
        self.size = 0
        self.count = 0

    def add(self, line: bytes) -> None:
        self.buffer.append(line)
        self.size += len(line)
        self.count += 1

    def flush(self) -> None:
        """Hand the waiting lines to the OS (one ``write`` per burst): they survive a killed process."""
        if self.buffer:
            data = b"".join(self.buffer)
            view = memoryview(data)
            while view:
                written = self.fh.write(view)
                view = view[written:]
            self.buffer.clear()
            self.size = 0

    def close(self, publish: bool) -> None:
        self.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        if publish:
            os.replace(self.partial, self.path)


def _why(exc: OSError, path: Path) -> str:
    """What stops ``path`` from being written, in words (``afile is a file, not a folder``)."""
    if isinstance(exc, (FileExistsError, NotADirectoryError)):
        parent = existing_ancestor(path)
        if not parent.is_dir():
            return f"{parent} is a file, not a folder"
    what = exc.strerror or str(exc)
    where = exc.filename if exc.filename is not None else None
    return f"{what} ({where})" if where and str(where) != str(path) else what


class OrderedWriter:
    """Takes finished records by input index; writes them to OUTPUT (or the failed file) in order."""

    def __init__(self, output: str | Path, failed: str | Path | None = None, sync_every: float = 0.25) -> None:
        self.output = Path(output)
        self.failed_path = Path(failed) if failed is not None else failed_path_for(output)
        try:
            if self.output.is_dir():
                raise IsADirectoryError(errno.EISDIR, "it is a folder", str(self.output))
            self.output.parent.mkdir(parents=True, exist_ok=True)
            self.out = _Sink(self.output)
        except OSError as exc:  # before anything is sent: a user error, not a traceback
            raise VichatError(f"{self.output}: cannot write the output there: {_why(exc, self.output)}") from None
        self.failed: _Sink | None = None
        self.waiting: dict[int, tuple[bool, Mapping[str, Any]]] = {}
        self.next = 0
        self.sync_every = sync_every
        self.last_sync = time.monotonic()

    @property
    def written(self) -> int:
        return self.out.count

    @property
    def failed_count(self) -> int:
        return self.failed.count if self.failed else 0

    def put(self, index: int, ok: bool, data: Mapping[str, Any]) -> None:
        """Record ``index`` is finished: ``data`` is the output record, or the failure entry."""
        self.waiting[index] = (ok, data)
        while self.next in self.waiting:
            ok, item = self.waiting.pop(self.next)
            if ok:
                self.out.add(_dumps(item))
            else:
                if self.failed is None:
                    self.failed = _Sink(self.failed_path)
                self.failed.add(_dumps(item))
            self.next += 1
        if self.out.size > 1 << 20 or time.monotonic() - self.last_sync > self.sync_every:
            self.sync()

    def sync(self) -> None:
        """Hand every finished line to the OS (no fsync: see the module docstring)."""
        self.out.flush()
        if self.failed:
            self.failed.flush()
        self.last_sync = time.monotonic()

    def finish(self) -> None:
        """Publish OUTPUT (and the failed file, or remove a stale one from an earlier run)."""
        self.out.close(publish=True)
        if self.failed:
            self.failed.close(publish=True)
        elif self.failed_path.exists():
            self.failed_path.unlink()

    def abort(self) -> None:
        """Keep what is written in the ``.partial`` files; publish nothing."""
        self.out.close(publish=False)
        if self.failed:
            self.failed.close(publish=False)
