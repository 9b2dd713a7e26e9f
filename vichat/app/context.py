"""What every tab shares: settings, the backend's models, the vote store, limits and battles."""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from ..records import VichatError
from ..serve.api import ChatBackend, ModelInfo
from ..arena.battles import BattleStore
from ..arena.ratings import Standing, leaderboard
from .safety import LimitError, scrub
from ..arena.session import Identities, SessionHasher, Visitor, load_or_create_salt
from .settings import AppSettings, Rate
from ..arena.votes import VoteStore, deduplicated

log = logging.getLogger("vichat.app")


def app_version() -> str:
    try:
        return metadata.version("vichat")
    except metadata.PackageNotFoundError:
        return ""


class StorageError(VichatError):
    """The votes database cannot be opened; the message names the file and what to do."""


class LeaderboardCache:
    """Standings recomputed only when votes changed (a bootstrap is the costly part)."""

    def __init__(self, store: VoteStore, settings: AppSettings) -> None:
        self.store = store
        self.settings = settings
        self._cache: dict[tuple[Any, ...], tuple[list[Standing], int]] = {}
        self._lock = threading.Lock()

    def standings(self, include_named: bool = False) -> tuple[list[Standing], int]:
        """Standings and the number of votes they rest on (after de-duplication)."""
        modes = ("anonymous", "named") if include_named else ("anonymous",)
        key = (self.store.state(), modes)
        with self._lock:  # one computation at a time; concurrent refreshes reuse its result
            if key not in self._cache:
                outcomes = deduplicated(self.store.ballots(modes), self.settings.leaderboard_address_cap)
                s = self.settings
                table = leaderboard(outcomes, rounds=s.bootstrap_rounds, prior=s.bt_prior, k=s.elo_k)
                # keep the other mode's entry if it is still current; drop everything stale
                self._cache = {k: v for k, v in self._cache.items() if k[0] == key[0]}
                self._cache[key] = (table, len(outcomes))
            return self._cache[key]


def open_votes(settings: AppSettings, lenient: bool = False) -> tuple[VoteStore, str, list[str]]:
    """The vote store and the salt. ``lenient``: when the database or the salt file cannot be
    used, fall back to memory (votes last until restart) and say so in the returned warnings,
    instead of raising :class:`StorageError` (a Space must come up, not crash-loop)."""
    warnings: list[str] = []
    try:
        votes = VoteStore(settings.votes_db)
    except (sqlite3.Error, OSError) as exc:
        reason = f"{settings.votes_db}: {type(exc).__name__}: {exc}"
        if not lenient:
            raise StorageError(f"cannot open the votes database {reason}; set VICHAT_VOTES_DB (--votes-db) to a "
                               "writable SQLite file") from None
        log.error("votes database unusable, keeping votes in memory until restart: %s", reason)
        warnings.append(f"Không mở được cơ sở dữ liệu phiếu bầu ({scrub(reason)}): phiếu bầu chỉ được giữ trong "
                        "bộ nhớ và sẽ mất khi khởi động lại.")
        votes = VoteStore.in_memory()
    try:
        salt = load_or_create_salt(settings.votes_db, settings.session_salt)
    except OSError as exc:
        if not lenient:
            raise StorageError(f"cannot store the session salt next to {settings.votes_db}: {exc}; set "
                               "VICHAT_SESSION_SALT") from None
        import secrets

        log.error("no session salt (%s): using a random one until restart; set VICHAT_SESSION_SALT", exc)
        salt = secrets.token_hex(32)
    return votes, salt, warnings


def registered_templates() -> list[str]:
    """Every registered prompt template, the paper's two first: a plugin's template shows up too."""
    from ..plugins import get_registry

    names = get_registry().names("templates")
    return sorted(names, key=lambda n: ({"chat": 0, "doctor": 1}.get(n, 2), n))


@dataclass
class AppContext:
    """Built once per app by :func:`vichat.app.app.build_app`."""

    settings: AppSettings
    backend: ChatBackend
    models: list[ModelInfo]
    votes: VoteStore
    hasher: SessionHasher
    identities: Identities
    battles: BattleStore
    board: LeaderboardCache
    warnings: list[str] = field(default_factory=list)
    version: str = field(default_factory=app_version)
    templates: list[str] = field(default_factory=lambda: ["chat", "doctor"])  # prompt templates on offer

    @classmethod
    def create(cls, backend: ChatBackend, settings: AppSettings, lenient: bool = False) -> "AppContext":
        votes, salt, warnings = open_votes(settings, lenient)
        hasher = SessionHasher(salt)
        rate = settings.session_rate

        def take_session(address: str) -> float:
            return votes.take([("session", address, rate.count, rate.window)])

        return cls(
            settings=settings,
            backend=backend,
            models=list(backend.models()),
            votes=votes,
            hasher=hasher,
            identities=Identities(hasher, take_session, settings.trusted_proxy_header, settings.trusted_proxy_hops),
            battles=BattleStore(settings.battle_ttl_s, settings.max_battles),
            board=LeaderboardCache(votes, settings),
            warnings=warnings,
            templates=registered_templates(),
        )

    def visitor(self, request: Any) -> Visitor:
        """The visitor behind ``request`` (a ``gr.Request``); :class:`LimitError` when a new
        session would exceed the address's session limit."""
        return self.identities.visitor(request)

    def session(self, request: Any) -> str:
        """The id of the visitor's server-issued session (battles and Stop buttons are keyed on it)."""
        return self.visitor(request).session

    def limit(self, kind: str, visitor: Visitor) -> None:
        """Count one ``kind`` event (``message``, ``vote``, ``judge``) for the visitor's session and
        address; :class:`LimitError` naming the wait when either is over its limit (then nothing
        is counted)."""
        s = self.settings
        session_rate, address_rate = {
            "message": (s.message_rate, s.address_message_rate),
            "vote": (s.vote_rate, s.address_vote_rate),
            "judge": (s.judge_rate, s.address_judge_rate),
        }[kind]
        events = [(kind, "s:" + visitor.session, session_rate.count, session_rate.window)]
        if visitor.address:
            events.append((kind, "a:" + visitor.address, address_rate.count, address_rate.window))
        wait = self.votes.take(events)
        if wait:
            raise LimitError(_too_fast(kind, wait))

    def model(self, name: str) -> ModelInfo | None:
        return next((m for m in self.models if m.name == name), None)

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]


def _too_fast(kind: str, wait: float) -> str:
    what = {"message": "gửi tin nhắn", "vote": "bầu chọn", "judge": "chấm điểm"}[kind]
    when = f"{math.ceil(wait)} giây" if wait < 120 else f"{math.ceil(wait / 60)} phút"
    return f"Bạn {what} quá nhanh (giới hạn của bản demo); hãy thử lại sau {when}."


__all__ = ["AppContext", "LeaderboardCache", "Rate", "StorageError", "open_votes"]
