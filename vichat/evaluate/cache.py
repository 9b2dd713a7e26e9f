"""The judgment cache: one SQLite row per finished judgment, committed the moment it arrives.

The key covers everything that can change a verdict: judge plugin and model, the prompt's id,
version and exact words, the question, both answers in their positions (so the order is part of
the key), the sampling settings and whether aspect scores were asked for. A rerun therefore sends
nothing it has already paid for, and a run killed at any moment loses at most the judgments still
in flight (WAL journal; each judgment is its own transaction).

Judgments whose text could not be read are cached too (they were paid for, and a rerun should
reproduce the report); ``--retry-failed`` asks again. Transport failures (retries exhausted) are
never cached.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..cache import SqliteCache, cache_dir

KEY_VERSION = "vichat-judge-1"
TABLE = """
CREATE TABLE IF NOT EXISTS judgments (
    key TEXT PRIMARY KEY,
    judge TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    ok INTEGER NOT NULL,
    payload TEXT NOT NULL,
    created REAL NOT NULL
) WITHOUT ROWID
"""


def default_judge_cache() -> Path:
    """``$VICHAT_CACHE_DIR/judge.sqlite``, beside the translation cache (``~/.cache/vichat``)."""
    return cache_dir() / "judge.sqlite"


def judgment_key(
    *, judge: str, model: str, prompt_key: str, prompt_fingerprint: str, question: str,
    answer1: str, answer2: str, settings: Mapping[str, Any],
) -> str:
    """The cache key of one judgment (a sha256 hex digest)."""
    material = json.dumps(
        [KEY_VERSION, judge, model, prompt_key, prompt_fingerprint, question, answer1, answer2,
         sorted((str(k), str(v)) for k, v in settings.items())],
        ensure_ascii=False,
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


class JudgmentCache(SqliteCache):
    """A handle on the cache file; used from the run's main thread only."""

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__(default_judge_cache() if path is None else path, [TABLE], "judge cache")

    def lookup(self, keys: Iterable[str], *, include_failed: bool = True) -> dict[str, dict]:
        """The cached judgments among ``keys`` (without unreadable ones if ``include_failed`` is False)."""
        return {key: json.loads(payload)
                for key, ok, payload in self.select_in("SELECT key, ok, payload FROM judgments WHERE key IN ({})", keys)
                if ok or include_failed}

    def store(self, key: str, *, judge: str, model: str, prompt: str, ok: bool, payload: Mapping[str, Any]) -> None:
        """Commit one judgment (replacing an older one under the same key)."""
        row = (key, judge, model, prompt, int(ok), json.dumps(payload, ensure_ascii=False), time.time())
        self._db.execute("INSERT OR REPLACE INTO judgments VALUES (?, ?, ?, ?, ?, ?, ?)", row)

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]
