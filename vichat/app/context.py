"""What every tab shares: settings, the backend's models, the vote store, limiters and battles."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from ..serve.api import ChatBackend, ModelInfo
from .battles import BattleStore
from .ratings import Standing, leaderboard
from .safety import RateLimiter
from .session import SessionHasher, load_or_create_salt
from .settings import AppSettings
from .votes import VoteStore


def app_version() -> str:
    try:
        return metadata.version("vichat")
    except metadata.PackageNotFoundError:
        return ""


class LeaderboardCache:
    """Standings recomputed only when votes changed (a bootstrap is the costly part)."""

    def __init__(self, store: VoteStore, settings: AppSettings) -> None:
        self.store = store
        self.settings = settings
        self._cache: dict[tuple[Any, ...], tuple[list[Standing], int]] = {}
        self._lock = threading.Lock()

    def standings(self, include_named: bool = False) -> tuple[list[Standing], int]:
        """Standings and the number of votes they rest on."""
        modes = ("anonymous", "named") if include_named else ("anonymous",)
        key = (self.store.state(), modes)
        with self._lock:  # one computation at a time; concurrent refreshes reuse its result
            if key not in self._cache:
                outcomes = self.store.outcomes(modes)
                s = self.settings
                table = leaderboard(outcomes, rounds=s.bootstrap_rounds, prior=s.bt_prior, k=s.elo_k)
                # keep the other mode's entry if it is still current; drop everything stale
                self._cache = {k: v for k, v in self._cache.items() if k[0] == key[0]}
                self._cache[key] = (table, len(outcomes))
            return self._cache[key]


@dataclass
class AppContext:
    """Built once per app by :func:`vichat.app.app.build_app`."""

    settings: AppSettings
    backend: ChatBackend
    models: list[ModelInfo]
    votes: VoteStore
    hasher: SessionHasher
    battles: BattleStore
    vote_limiter: RateLimiter
    message_limiter: RateLimiter
    judge_limiter: RateLimiter
    board: LeaderboardCache
    version: str = field(default_factory=app_version)

    @classmethod
    def create(cls, backend: ChatBackend, settings: AppSettings) -> "AppContext":
        votes = VoteStore(settings.votes_db)
        return cls(
            settings=settings,
            backend=backend,
            models=list(backend.models()),
            votes=votes,
            hasher=SessionHasher(load_or_create_salt(settings.votes_db, settings.session_salt)),
            battles=BattleStore(settings.battle_ttl_s, settings.max_battles),
            vote_limiter=RateLimiter(settings.vote_rate),
            message_limiter=RateLimiter(settings.message_rate),
            judge_limiter=RateLimiter(settings.judge_rate),
            board=LeaderboardCache(votes, settings),
        )

    def session(self, request: Any) -> str:
        """The pseudonymous id of the page session behind ``request`` (a ``gr.Request``)."""
        return self.hasher(getattr(request, "session_hash", None))

    def model(self, name: str) -> ModelInfo | None:
        return next((m for m in self.models if m.name == name), None)

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]
