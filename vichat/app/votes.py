"""The arena's vote store: SQLite in WAL mode, one transaction per vote, one vote per battle.

The schema (documented in docs/app.md) keeps everything a researcher needs to re-analyse a battle:
both model names (``model_a`` is the left side), the prompt, both answers, earlier turns, decoding
settings, times, the vote and a salted session hash. ``battle_id`` is UNIQUE, so a second vote for
a battle is refused by the database itself, even across restarts or processes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from ..records import VichatError

#: The four outcomes. ``both_bad`` is its own outcome: stored and counted apart from ``tie``.
OUTCOMES = ("a", "b", "tie", "both_bad")
MODES = ("anonymous", "named")
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS votes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    battle_id   TEXT NOT NULL UNIQUE,
    mode        TEXT NOT NULL CHECK (mode IN ('anonymous', 'named')),
    model_a     TEXT NOT NULL,
    model_b     TEXT NOT NULL,
    vote        TEXT NOT NULL CHECK (vote IN ('a', 'b', 'tie', 'both_bad')),
    prompt      TEXT NOT NULL,
    answer_a    TEXT NOT NULL,
    answer_b    TEXT NOT NULL,
    turns       TEXT NOT NULL DEFAULT '[]',
    decoding    TEXT NOT NULL DEFAULT '{}',
    session     TEXT NOT NULL,
    started_at  REAL NOT NULL,
    voted_at    REAL NOT NULL,
    app_version TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS votes_models ON votes (model_a, model_b);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class DuplicateVoteError(VichatError):
    """The battle already has a vote."""


@dataclass(frozen=True)
class Vote:
    """One stored vote. ``turns`` holds earlier turns of a multi-turn battle as
    ``{"prompt", "answer_a", "answer_b"}`` dicts; ``prompt``/``answer_*`` are the last turn."""

    battle_id: str
    mode: str
    model_a: str
    model_b: str
    vote: str
    prompt: str
    answer_a: str
    answer_b: str
    session: str
    started_at: float
    voted_at: float
    turns: Sequence[dict[str, str]] = ()
    decoding: dict[str, Any] = field(default_factory=dict)
    app_version: str = ""

    def __post_init__(self) -> None:
        if self.vote not in OUTCOMES:
            raise ValueError(f"vote={self.vote!r}: expected one of {', '.join(OUTCOMES)}")
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r}: expected one of {', '.join(MODES)}")

    def to_dict(self) -> dict[str, Any]:
        """The JSONL export row: the stored columns plus an ISO-8601 UTC time for readers."""
        d = asdict(self)
        d["turns"] = list(self.turns)
        d["voted_at_iso"] = datetime.fromtimestamp(self.voted_at, timezone.utc).isoformat(timespec="seconds")
        return d


class VoteStore:
    """Votes in one SQLite file. Safe to share between threads: each call opens its own
    connection (cheap for SQLite), so no connection is ever used by two threads at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            # WAL lets the leaderboard and exports read while a vote is being written.
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(_SCHEMA)
            con.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            # FULL: a vote acknowledged in the page survives a crash or power cut, not only a restart.
            con.execute("PRAGMA synchronous=FULL")
            con.execute("PRAGMA busy_timeout=30000")
            yield con
        finally:
            con.close()

    def add(self, vote: Vote) -> int:
        """Store ``vote`` in one transaction and return its row id; :class:`DuplicateVoteError`
        if its battle already has one."""
        row = (
            vote.battle_id, vote.mode, vote.model_a, vote.model_b, vote.vote, vote.prompt, vote.answer_a,
            vote.answer_b, json.dumps(list(vote.turns), ensure_ascii=False),
            json.dumps(vote.decoding, ensure_ascii=False, sort_keys=True), vote.session, vote.started_at,
            vote.voted_at, vote.app_version,
        )
        with self._connect() as con:
            try:
                con.execute("BEGIN IMMEDIATE")
                cur = con.execute(
                    "INSERT INTO votes (battle_id, mode, model_a, model_b, vote, prompt, answer_a, answer_b, turns,"
                    " decoding, session, started_at, voted_at, app_version) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    row,
                )
                con.execute("COMMIT")
            except sqlite3.IntegrityError:
                con.execute("ROLLBACK")
                raise DuplicateVoteError(f"battle {vote.battle_id} already has a vote") from None
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
            return int(cur.lastrowid)

    def has_vote(self, battle_id: str) -> bool:
        with self._connect() as con:
            return con.execute("SELECT 1 FROM votes WHERE battle_id = ?", (battle_id,)).fetchone() is not None

    def count(self) -> int:
        with self._connect() as con:
            return int(con.execute("SELECT COUNT(*) FROM votes").fetchone()[0])

    def state(self) -> tuple[int, int]:
        """``(count, last id)``: changes whenever a vote is added (the leaderboard's cache key)."""
        with self._connect() as con:
            n, last = con.execute("SELECT COUNT(*), COALESCE(MAX(id), 0) FROM votes").fetchone()
            return int(n), int(last)

    def outcomes(self, modes: Sequence[str] = ("anonymous",)) -> list[tuple[str, str, str]]:
        """``(model_a, model_b, vote)`` in the order votes were cast (online Elo depends on it)."""
        marks = ",".join("?" for _ in modes)
        with self._connect() as con:
            rows = con.execute(
                f"SELECT model_a, model_b, vote FROM votes WHERE mode IN ({marks}) ORDER BY id", tuple(modes)
            ).fetchall()
        return [(a, b, v) for a, b, v in rows]

    def iter_votes(self) -> Iterator[Vote]:
        """Every vote, oldest first."""
        with self._connect() as con:
            con.row_factory = sqlite3.Row
            for r in con.execute("SELECT * FROM votes ORDER BY id"):
                yield Vote(
                    battle_id=r["battle_id"], mode=r["mode"], model_a=r["model_a"], model_b=r["model_b"],
                    vote=r["vote"], prompt=r["prompt"], answer_a=r["answer_a"], answer_b=r["answer_b"],
                    session=r["session"], started_at=r["started_at"], voted_at=r["voted_at"],
                    turns=json.loads(r["turns"]), decoding=json.loads(r["decoding"]),
                    app_version=r["app_version"],
                )

    def export_jsonl(self, out: str | Path | IO[str]) -> int:
        """Write every vote as one JSON object per line (UTF-8, Vietnamese unescaped); return the count."""
        if hasattr(out, "write"):
            return self._write(out)  # type: ignore[arg-type]
        path = Path(out)  # type: ignore[arg-type]
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        with open(tmp, "w", encoding="utf-8") as f:
            n = self._write(f)
        tmp.replace(path)  # a reader never sees half a file
        return n

    def _write(self, f: IO[str]) -> int:
        n = 0
        for vote in self.iter_votes():
            f.write(json.dumps(vote.to_dict(), ensure_ascii=False) + "\n")
            n += 1
        return n


def now() -> float:
    """Unix time in seconds (one place, so tests can reason about it)."""
    return time.time()
