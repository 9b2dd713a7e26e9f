"""Pseudonymous session ids: what votes store instead of anything that identifies a visitor.

Gradio gives each page load a random ``session_hash``. Votes store ``HMAC-SHA256(salt, it)``, so
votes from one page session can be grouped (to spot ballot stuffing) but not linked to the
Gradio session, and no IP address is ever read, hashed or stored. The salt comes from
``VICHAT_SESSION_SALT`` or, failing that, a random salt created once and kept next to the votes
database (mode 0600), so hashes stay stable across restarts.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SALT_FILE = "session-salt"


def load_or_create_salt(db_path: Path, configured: str | None = None) -> str:
    """``configured`` if given, else the salt stored beside ``db_path`` (created on first use)."""
    if configured:
        return configured
    path = Path(db_path).parent / SALT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return path.read_text(encoding="utf-8").strip() or _write_salt(path)
    except FileNotFoundError:
        return _write_salt(path)


def _write_salt(path: Path) -> str:
    salt = secrets.token_hex(32)
    # O_EXCL: two processes starting at once must agree on one salt; the loser reads the winner's.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(salt + "\n")
    return salt


class SessionHasher:
    """Maps a Gradio session hash to the pseudonymous id stored with votes."""

    def __init__(self, salt: str) -> None:
        self._key = salt.encode("utf-8")

    def __repr__(self) -> str:  # the salt must never reach a log
        return "SessionHasher(<salt hidden>)"

    def __call__(self, session_hash: str | None) -> str:
        raw = (session_hash or "anonymous").encode("utf-8")
        return hmac.new(self._key, raw, hashlib.sha256).hexdigest()[:32]
