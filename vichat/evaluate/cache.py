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
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..records import VichatError
from ..translate.cache import default_cache_path

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
    return default_cache_path().with_name("judge.sqlite")


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


class JudgmentCache:
    """A handle on the cache file; used from the run's main thread only."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else default_judge_cache()
        if str(self.path) != ":memory:":
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise VichatError(f"cannot create the folder of the judge cache {self.path}: {exc} (pass --cache PATH)") from exc
        try:
            self._db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL"):
                self._db.execute(f"PRAGMA {pragma}")
            self._db.execute(TABLE)
        except sqlite3.DatabaseError as exc:
            raise VichatError(f"{self.path}: not a usable judge cache ({exc}); pass --cache PATH or move it away") from exc

    def lookup(self, keys: Iterable[str], *, include_failed: bool = True) -> dict[str, dict]:
        """The cached judgments among ``keys`` (without unreadable ones if ``include_failed`` is False)."""
        wanted = list(dict.fromkeys(keys))
        out: dict[str, dict] = {}
        for i in range(0, len(wanted), 400):  # SQLite caps bound parameters per statement
            part = wanted[i : i + 400]
            sql = f"SELECT key, ok, payload FROM judgments WHERE key IN ({','.join('?' * len(part))})"
            for key, ok, payload in self._db.execute(sql, part):
                if ok or include_failed:
                    out[key] = json.loads(payload)
        return out

    def store(self, key: str, *, judge: str, model: str, prompt: str, ok: bool, payload: Mapping[str, Any]) -> None:
        """Commit one judgment (replacing an older one under the same key)."""
        row = (key, judge, model, prompt, int(ok), json.dumps(payload, ensure_ascii=False), time.time())
        self._db.execute("INSERT OR REPLACE INTO judgments VALUES (?, ?, ?, ?, ?, ?, ?)", row)

    def count(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "JudgmentCache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
