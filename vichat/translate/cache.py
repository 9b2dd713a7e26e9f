"""Persistent translation cache: SQLite in WAL mode, one row per translated chunk of text.

The key is a sha256 over the translator name, the options that change its output (model,
temperature...), source and target language, and the sha256 of the protected text that was sent
(markers in place of code and numbers, so "Call 555" and "Call 777" share one paid translation).
Only the job's main thread writes, one transaction per finished batch: a kill -9 loses at most
the batches still in flight, never a committed one (WAL with synchronous=NORMAL is durable
against process crashes; only a power cut can lose the last commits).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Iterable, Mapping

from ..records import VichatError

SCHEMA = """
CREATE TABLE IF NOT EXISTS translations (
    key TEXT PRIMARY KEY,
    translator TEXT NOT NULL,
    source TEXT NOT NULL,
    target TEXT NOT NULL,
    translation TEXT NOT NULL,
    created REAL NOT NULL
) WITHOUT ROWID
"""
KEY_VERSION = "vichat-translate-1"


def default_cache_path() -> Path:
    """``$VICHAT_CACHE_DIR/translate.sqlite`` (``VICHAT_CACHE_DIR`` defaults to ``~/.cache/vichat``)."""
    root = os.environ.get("VICHAT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "vichat")
    return Path(root) / "translate.sqlite"


def options_fingerprint(options: Mapping[str, object]) -> str:
    """A stable string for the options that change output (values compared as strings)."""
    return json.dumps({str(k): str(v) for k, v in sorted(options.items())}, sort_keys=True, ensure_ascii=False)


def cache_key(translator: str, options: Mapping[str, object], source: str, target: str, text: str) -> str:
    """The cache key of ``text`` (the protected text actually sent) under these settings."""
    text_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
    material = "\x00".join((KEY_VERSION, translator, options_fingerprint(options), source, target, text_hash))
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


class TranslationCache:
    """A handle on the cache file; use from one thread (the job's main thread)."""

    def __init__(self, path: str | Path | None = None) -> None:
        if path is None:
            path = default_cache_path()
        self.path: str | Path = path if str(path) == ":memory:" else Path(path)
        target = str(self.path)
        if target != ":memory:":
            try:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise VichatError(f"cannot create the cache folder for {target}: {exc} (pass --cache PATH)") from exc
        try:
            self._db = sqlite3.connect(target, timeout=30.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise VichatError(
                f"{target}: not a usable translation cache ({exc}); pass another --cache PATH or move the file away"
            ) from exc

    def get_many(self, keys: Iterable[str]) -> dict[str, str]:
        """The cached translations among ``keys``."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, str] = {}
        for i in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
            chunk = keys[i : i + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(f"SELECT key, translation FROM translations WHERE key IN ({marks})", chunk)
            found.update(rows.fetchall())
        return found

    def put_many(self, items: Iterable[tuple[str, str]], translator: str, source: str, target: str) -> None:
        """Store ``(key, translation)`` pairs in one transaction (all or nothing)."""
        now = time.time()
        rows = [(k, translator, source, target, t, now) for k, t in items]
        if not rows:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany("INSERT OR REPLACE INTO translations VALUES (?, ?, ?, ?, ?, ?)", rows)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM translations").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "TranslationCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
