"""The app's settings: limits, storage and concurrency, read from the environment.

Every knob has a default that suits a small public Space; ``VICHAT_*`` variables override them (see
docs/app.md). Secrets are never part of the settings: API keys stay in the environment and are read
by the plugins that need them; the session salt is held here only to hash sessions and is hidden
from ``repr`` so it never reaches a log.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping

from ..records import VichatError

DEFAULT_VOTES_DB = Path("vichat-data") / "votes.sqlite"
#: Judges offered when ``VICHAT_APP_JUDGES`` is unset: they call an API and load nothing here.
REMOTE_JUDGES = ("openai",)


class SettingsError(VichatError):
    """An environment variable has a value the app cannot use; the message names it."""


@dataclass(frozen=True)
class Rate:
    """At most ``count`` events per ``window`` seconds (``count`` 0 disables the limit)."""

    count: int
    window: float

    @classmethod
    def parse(cls, text: str, var: str = "rate") -> "Rate":
        """``"12/60"``: 12 per 60 seconds; ``"0"``: no limit."""
        text = text.strip()
        try:
            if "/" in text:
                count, window = text.split("/", 1)
                rate = cls(int(count), float(window))
            else:
                rate = cls(int(text), 60.0)
        except ValueError:
            raise SettingsError(f"{var}={text!r}: expected COUNT/SECONDS such as 12/60, or 0 for no limit") from None
        if rate.count < 0 or rate.window <= 0:
            raise SettingsError(f"{var}={text!r}: COUNT must be >= 0 and SECONDS > 0")
        return rate

    def __str__(self) -> str:
        return f"{self.count}/{self.window:g}"


@dataclass(frozen=True)
class AppSettings:
    """What the app needs besides a backend. Build with :meth:`from_env`, adjust with :meth:`with_`.

    ``judges`` ``None`` offers the remote judges of :data:`REMOTE_JUDGES` only: a judge that loads
    a model in-process (``local``) must be listed by the operator. ``admin_token`` unset turns the
    vote export off.
    """

    votes_db: Path = DEFAULT_VOTES_DB
    session_salt: str | None = field(default=None, repr=False)
    title: str = "vichat: trợ lý tiếng Việt"
    max_input_chars: int = 2000
    max_turns: int = 8
    vote_rate: Rate = Rate(12, 60.0)
    message_rate: Rate = Rate(30, 60.0)
    judge_rate: Rate = Rate(5, 300.0)
    # Per client address (hashed): a visitor can open fresh sessions for free, not fresh addresses.
    address_vote_rate: Rate = Rate(30, 3600.0)
    address_message_rate: Rate = Rate(120, 600.0)
    address_judge_rate: Rate = Rate(10, 3600.0)
    session_rate: Rate = Rate(30, 3600.0)
    trusted_proxy_header: str | None = None
    trusted_proxy_hops: int = 1
    min_answer_chars: int = 20
    max_answer_chars: int = 8000
    max_history_chars: int = 40_000
    # Streams generated at once (an arena battle is two). The local engine decodes them in one batch
    # (its max_batch_size, 16 by default, is the hard bound), so more at once raises throughput.
    generation_concurrency: int = 8
    judge_concurrency: int = 2
    default_concurrency: int = 8
    queue_size: int | None = 64
    battle_ttl_s: float = 3600.0
    max_battles: int = 20_000
    report_dirs: tuple[Path, ...] = ()
    judges: tuple[str, ...] | None = None
    judge_model: str | None = None
    export_enabled: bool = True
    # Whether a visitor reads a failure's details (server URL, adapter path, configuration line) or
    # only that it failed, the details going to the log. from_env: off on a Space, else on.
    error_detail: bool = True
    admin_token: str | None = field(default=None, repr=False)
    export_ttl_s: float = 300.0
    max_upload: str = "1mb"
    cache_ttl_s: int = 3600
    leaderboard_address_cap: int = 50
    bootstrap_rounds: int = 1000
    elo_k: float = 16.0
    bt_prior: float = 0.5

    def with_(self, **changes: object) -> "AppSettings":
        """A copy with ``changes`` applied (tests and ``vichat serve`` flags)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "AppSettings":
        """Settings from ``VICHAT_*`` variables; a bad value raises :class:`SettingsError` naming it."""
        env = os.environ if environ is None else environ
        base = cls()
        changes: dict[str, object] = {}

        def integer(var: str, attr: str, minimum: int = 0) -> None:
            if env.get(var, "").strip():
                try:
                    value = int(env[var])
                except ValueError:
                    raise SettingsError(f"{var}={env[var]!r}: expected an integer") from None
                if value < minimum:
                    raise SettingsError(f"{var}={value}: must be at least {minimum}")
                changes[attr] = value

        if env.get("VICHAT_VOTES_DB", "").strip():
            changes["votes_db"] = Path(env["VICHAT_VOTES_DB"]).expanduser()
        if env.get("VICHAT_SESSION_SALT", ""):
            changes["session_salt"] = env["VICHAT_SESSION_SALT"]
        if env.get("VICHAT_APP_TITLE", "").strip():
            changes["title"] = env["VICHAT_APP_TITLE"].strip()
        integer("VICHAT_MAX_INPUT_CHARS", "max_input_chars", 1)
        integer("VICHAT_MAX_TURNS", "max_turns", 1)
        integer("VICHAT_GENERATION_CONCURRENCY", "generation_concurrency", 1)
        integer("VICHAT_JUDGE_CONCURRENCY", "judge_concurrency", 1)
        integer("VICHAT_CONCURRENCY", "default_concurrency", 1)
        integer("VICHAT_BOOTSTRAP_ROUNDS", "bootstrap_rounds", 0)
        integer("VICHAT_MIN_ANSWER_CHARS", "min_answer_chars", 0)
        integer("VICHAT_MAX_ANSWER_CHARS", "max_answer_chars", 1)
        integer("VICHAT_MAX_HISTORY_CHARS", "max_history_chars", 1)
        integer("VICHAT_TRUSTED_PROXY_HOPS", "trusted_proxy_hops", 1)
        integer("VICHAT_EXPORT_TTL", "export_ttl_s", 1)
        integer("VICHAT_CACHE_TTL", "cache_ttl_s", 60)
        integer("VICHAT_LEADERBOARD_ADDRESS_CAP", "leaderboard_address_cap", 0)
        if env.get("VICHAT_TRUSTED_PROXY_HEADER", "").strip():
            changes["trusted_proxy_header"] = env["VICHAT_TRUSTED_PROXY_HEADER"].strip().lower()
        if env.get("VICHAT_ADMIN_TOKEN", ""):
            if len(env["VICHAT_ADMIN_TOKEN"]) < 16:
                raise SettingsError("VICHAT_ADMIN_TOKEN: use at least 16 random characters "
                                    "(python -c 'import secrets; print(secrets.token_urlsafe())')")
            changes["admin_token"] = env["VICHAT_ADMIN_TOKEN"]
        if env.get("VICHAT_MAX_UPLOAD_SIZE", "").strip():
            changes["max_upload"] = env["VICHAT_MAX_UPLOAD_SIZE"].strip().lower()
        if env.get("VICHAT_QUEUE_SIZE", "").strip():
            integer("VICHAT_QUEUE_SIZE", "queue_size", 0)
            if changes["queue_size"] == 0:
                changes["queue_size"] = None  # 0 means unbounded, as Gradio's None
        for var, attr in (("VICHAT_VOTE_RATE", "vote_rate"), ("VICHAT_MESSAGE_RATE", "message_rate"),
                          ("VICHAT_JUDGE_RATE", "judge_rate"), ("VICHAT_ADDRESS_VOTE_RATE", "address_vote_rate"),
                          ("VICHAT_ADDRESS_MESSAGE_RATE", "address_message_rate"),
                          ("VICHAT_ADDRESS_JUDGE_RATE", "address_judge_rate"),
                          ("VICHAT_SESSION_RATE", "session_rate")):
            if env.get(var, "").strip():
                changes[attr] = Rate.parse(env[var], var)
        if env.get("VICHAT_REPORTS", "").strip():
            changes["report_dirs"] = tuple(
                Path(p).expanduser() for p in env["VICHAT_REPORTS"].split(os.pathsep) if p.strip()
            )
        if "VICHAT_APP_JUDGES" in env:
            changes["judges"] = tuple(j.strip() for j in env["VICHAT_APP_JUDGES"].split(",") if j.strip())
        if env.get("VICHAT_APP_JUDGE_MODEL", "").strip():
            changes["judge_model"] = env["VICHAT_APP_JUDGE_MODEL"].strip()
        if env.get("VICHAT_ERROR_DETAIL", "").strip():
            changes["error_detail"] = env["VICHAT_ERROR_DETAIL"].strip().lower() not in ("0", "false", "no", "off")
        elif env.get("SPACE_ID", "").strip():  # a public Space: its hosts and files are nobody's business
            changes["error_detail"] = False
        if env.get("VICHAT_VOTES_EXPORT", "").strip():
            changes["export_enabled"] = env["VICHAT_VOTES_EXPORT"].strip().lower() not in ("0", "false", "no", "off")
        return replace(base, **changes)  # type: ignore[arg-type]
