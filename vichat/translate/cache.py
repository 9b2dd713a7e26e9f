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
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping

from ..cache import SqliteCache, cache_dir

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
    return cache_dir() / "translate.sqlite"


def options_fingerprint(options: Mapping[str, object]) -> str:
    """A stable string for the options that change output (values compared as strings)."""
    return json.dumps({str(k): str(v) for k, v in sorted(options.items())}, sort_keys=True, ensure_ascii=False)


def cache_key(translator: str, options: Mapping[str, object], source: str, target: str, text: str) -> str:
    """The cache key of ``text`` (the protected text actually sent) under these settings."""
    return cache_keyer(translator, options, source, target)(text)


def cache_keyer(translator: str, options: Mapping[str, object], source: str, target: str) -> Callable[[str], str]:
    """``cache_key`` with the settings fixed: the part of the key they make is built once, not per text."""
    head = hashlib.sha256("\x00".join((KEY_VERSION, translator, options_fingerprint(options), source, target, "")).encode("utf-8"))
    sha256 = hashlib.sha256

    def key(text: str) -> str:
        h = head.copy()
        h.update(sha256(text.encode("utf-8")).hexdigest().encode("ascii"))
        return h.hexdigest()

    return key


class TranslationCache(SqliteCache):
    """A handle on the cache file; use from one thread (the job's main thread)."""

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__(default_cache_path() if path is None else path, [SCHEMA], "translation cache")

    def get_many(self, keys: Iterable[str]) -> dict[str, str]:
        """The cached translations among ``keys``."""
        return dict(self.select_in("SELECT key, translation FROM translations WHERE key IN ({})", keys))

    def is_empty(self) -> bool:
        """True when the cache holds no translation at all (a first run: nothing to look up)."""
        return self._db.execute("SELECT 1 FROM translations LIMIT 1").fetchone() is None

    def put_many(self, items: Iterable[tuple[str, str]], translator: str, source: str, target: str) -> None:
        """Store ``(key, translation)`` pairs in one transaction (all or nothing)."""
        now = time.time()
        rows = [(k, translator, source, target, t, now) for k, t in items]
        self.write_many("INSERT OR REPLACE INTO translations VALUES (?, ?, ?, ?, ?, ?)", rows)

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM translations").fetchone()[0]
