"""The arena's vote store: SQLite in WAL mode, one transaction per vote, one vote per battle.

The schema (documented in docs/app.md) keeps everything a researcher needs to re-analyse a battle:
both model names (``model_a`` is the left side), the prompt, both answers, earlier turns, decoding
settings, times, the vote, the server-issued session id and the salted hash of the client address.
``battle_id`` is UNIQUE, so a second vote for a battle is refused by the database itself, even
across restarts or processes. The same file holds the abuse-limit counters (``rate_events``), so a
restart resets no limit. Version 1 databases are migrated in place when opened (see
:func:`migrate`).
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from ..records import VichatError

#: The four outcomes. ``both_bad`` is its own outcome: stored and counted apart from ``tie``.
OUTCOMES = ("a", "b", "tie", "both_bad")
MODES = ("anonymous", "named")
SCHEMA_VERSION = 2

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
    app_version TEXT NOT NULL DEFAULT '',
    address     TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS votes_models ON votes (model_a, model_b);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rate_events (
    kind TEXT NOT NULL,
    key  TEXT NOT NULL,
    at   REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS rate_events_key ON rate_events (kind, key, at);
"""
#: Rate events older than this are deleted (no limit window is longer than a day).
_EVENT_HORIZON_S = 86_400.0


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
    address: str = ""

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


def migrate(con: sqlite3.Connection) -> None:
    """Bring a database of an older schema up to :data:`SCHEMA_VERSION`, in one transaction.

    Version 1 -> 2 adds ``votes.address`` (``''`` for earlier votes: their address is unknown) and
    the ``rate_events`` table. Running it on a current database changes nothing."""
    con.execute("BEGIN IMMEDIATE")
    try:
        for statement in filter(str.strip, _SCHEMA.split(";")):  # IF NOT EXISTS: creates what is missing
            con.execute(statement)
        columns = {row[1] for row in con.execute("PRAGMA table_info(votes)")}
        if "address" not in columns:
            con.execute("ALTER TABLE votes ADD COLUMN address TEXT NOT NULL DEFAULT ''")
        con.execute("CREATE INDEX IF NOT EXISTS votes_address ON votes (address)")
        con.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(SCHEMA_VERSION),))
        con.execute("COMMIT")
    except BaseException:
        if con.in_transaction:
            con.execute("ROLLBACK")
        raise


class VoteStore:
    """Votes in one SQLite file. Safe to share between threads: each call opens its own
    connection (cheap for SQLite), so no connection is ever used by two threads at once.

    :meth:`in_memory` gives a store that lives as long as the process: the fallback when the
    configured file cannot be opened (the page says so; votes are lost on restart)."""

    def __init__(self, path: str | Path, *, _uri: str | None = None) -> None:
        self.path = Path(path)
        self._uri = _uri
        self._keeper: sqlite3.Connection | None = None
        self._inserts = 0
        if _uri is not None:
            # A shared-cache memory database lives while one connection is open: keep one.
            self._keeper = sqlite3.connect(_uri, uri=True, check_same_thread=False)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            # WAL lets the leaderboard and exports read while a vote is being written.
            if _uri is None:
                con.execute("PRAGMA journal_mode=WAL")
            migrate(con)

    @classmethod
    def in_memory(cls) -> "VoteStore":
        """A store in memory, private to this process."""
        return cls(":memory:", _uri=f"file:vichat-votes-{uuid.uuid4().hex}?mode=memory&cache=shared")

    @property
    def persistent(self) -> bool:
        return self._uri is None

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if self._uri is not None:
            con = sqlite3.connect(self._uri, uri=True, timeout=30.0, isolation_level=None)
        else:
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
            vote.voted_at, vote.app_version, vote.address,
        )
        with self._connect() as con:
            try:
                con.execute("BEGIN IMMEDIATE")
                cur = con.execute(
                    "INSERT INTO votes (battle_id, mode, model_a, model_b, vote, prompt, answer_a, answer_b, turns,"
                    " decoding, session, started_at, voted_at, app_version, address)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
        return [(a, b, v) for a, b, v, *_ in self.ballots(modes)]

    def ballots(self, modes: Sequence[str] = ("anonymous",)) -> list[tuple[str, str, str, str, str, float, str]]:
        """``(model_a, model_b, vote, address, session, voted_at, prompt)`` in voting order: what
        the leaderboard's de-duplication and the audit look at."""
        marks = ",".join("?" for _ in modes)
        with self._connect() as con:
            return [tuple(r) for r in con.execute(
                f"SELECT model_a, model_b, vote, address, session, voted_at, prompt FROM votes"
                f" WHERE mode IN ({marks}) ORDER BY id", tuple(modes))]

    def take(self, events: Sequence[tuple[str, str, int, float]], at: float | None = None) -> float:
        """Record one event per ``(kind, key, count, window)`` if every one is under its limit
        (at most ``count`` per ``window`` seconds; ``count`` 0: no limit) and return 0; else
        record nothing and return the seconds until the tightest limit frees up.

        One transaction, so concurrent requests cannot both slip under a limit, and the counters
        live in the database: a restart resets nothing."""
        at = now() if at is None else at
        events = [e for e in events if e[2] > 0]
        if not events:
            return 0.0
        with self._connect() as con:
            # Counters need not survive a power cut (votes do): NORMAL spares an fsync per message.
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("BEGIN IMMEDIATE")
            try:
                wait = 0.0
                for kind, key, count, window in events:
                    n, oldest = con.execute(
                        "SELECT COUNT(*), MIN(at) FROM rate_events WHERE kind = ? AND key = ? AND at > ?",
                        (kind, key, at - window)).fetchone()
                    if n >= count:
                        wait = max(wait, 0.01, oldest + window - at)
                if not wait:
                    con.executemany("INSERT INTO rate_events (kind, key, at) VALUES (?, ?, ?)",
                                    [(kind, key, at) for kind, key, _, _ in events])
                    self._inserts += 1
                    if self._inserts % 500 == 1:  # now and then: forget what no window can see
                        con.execute("DELETE FROM rate_events WHERE at < ?", (at - _EVENT_HORIZON_S,))
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
        return wait

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
                    app_version=r["app_version"], address=r["address"],
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


Ballot = tuple  # (model_a, model_b, vote, address, session, voted_at, prompt): VoteStore.ballots()


def _prompt_key(prompt: str) -> str:
    return " ".join(prompt.casefold().split())


def deduplicated(ballots: Sequence[Ballot], address_cap: int = 50) -> list[tuple[str, str, str]]:
    """The outcomes the leaderboard rates, after two rules against what slipped past the limits.

    1. **Repeated prompts**: of the votes from one address on the same prompt (case and spacing
       ignored), only the first counts, so re-asking one question to steer battles adds nothing.
    2. **Bursts**: from one address, at most ``address_cap`` votes per UTC day count (the first
       ones); ``0`` turns this off.

    Votes whose address is unknown (stored before addresses were) are kept as they are. The rules
    follow Chatbot Arena's practice of de-duplicating over-represented prompts and setting aside
    anomalous users before fitting (Chiang et al., 2024, arXiv:2403.04132); ``vichat arena
    leaderboard --audit`` shows what they remove."""
    seen: set[tuple[str, str]] = set()
    per_day: dict[tuple[str, int], int] = {}
    out: list[tuple[str, str, str]] = []
    for a, b, vote, address, _session, voted_at, prompt in ballots:
        if address:
            key = (address, _prompt_key(prompt or ""))
            if key in seen:
                continue
            seen.add(key)
            day = (address, int(voted_at // 86_400))
            per_day[day] = per_day.get(day, 0) + 1
            if address_cap and per_day[day] > address_cap:
                continue
        out.append((a, b, vote))
    return out
