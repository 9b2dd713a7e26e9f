"""Where vichat caches things, and the SQLite store that the translation and judgment caches share.

Every cache lives under :func:`cache_dir` (``$VICHAT_CACHE_DIR``, default ``~/.cache/vichat``).
:class:`SqliteCache` is one file in WAL mode with ``synchronous=NORMAL``: durable against a
killed process (only a power cut can lose the last commits), readable while a run writes, and
written by one thread (the job's main thread, see :mod:`vichat.jobs`).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from .records import VichatError

#: SQLite's default limit on bound parameters is 999 in old builds: stay well under it.
_CHUNK = 400


def cache_dir() -> Path:
    """``$VICHAT_CACHE_DIR``, or ``~/.cache/vichat``."""
    root = os.environ.get("VICHAT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "vichat")
    return Path(root)


class SqliteCache:
    """One cache file: opened with the schema, WAL journal, and a clear error when it is unusable.

    :param path: the file, or ``":memory:"``.
    :param schema: ``CREATE TABLE IF NOT EXISTS ...`` statements run at open.
    :param what: how the error messages name it ("translation cache", "judge cache").
    """

    def __init__(self, path: str | Path, schema: Sequence[str], what: str) -> None:
        self.path: str | Path = path if str(path) == ":memory:" else Path(path)
        target = str(self.path)
        if target != ":memory:":
            try:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise VichatError(f"cannot create the folder of the {what} {target}: {exc} (pass --cache PATH)") from exc
        # A new file holds nothing to lose: it is switched to WAL and given its tables without
        # waiting for the disk (three fsyncs, tens of ms on a busy disk); every later commit and
        # checkpoint runs under synchronous=NORMAL.
        new = target != ":memory:" and not Path(target).exists()
        try:
            self._db = sqlite3.connect(target, timeout=30.0, isolation_level=None)
            if new:
                self._db.execute("PRAGMA synchronous=OFF")
            self._db.execute("PRAGMA journal_mode=WAL")
            for statement in schema:
                self._db.execute(statement)
            self._db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as exc:
            raise VichatError(
                f"{target}: not a usable {what} ({exc}); pass another --cache PATH or move the file away"
            ) from exc

    def select_in(self, sql: str, keys: Iterable[str]) -> Iterator[tuple[Any, ...]]:
        """Rows of ``sql`` (with one ``IN ({})`` placeholder) for ``keys``, in chunks SQLite accepts."""
        wanted = list(dict.fromkeys(keys))
        for i in range(0, len(wanted), _CHUNK):
            part = wanted[i : i + _CHUNK]
            yield from self._db.execute(sql.format(",".join("?" * len(part))), part)

    def write_many(self, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
        """Run ``sql`` for every row in one transaction: all of them are committed, or none."""
        if not rows:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(sql, rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    def __enter__(self):  # noqa: ANN204 - the subclass
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
