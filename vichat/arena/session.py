"""Who is asking, in a form the client cannot mint for free, and nothing that identifies a person.

Gradio's ``session_hash`` is chosen by the client (a script sends a fresh one with every request),
so limits and votes are keyed on two server-side values instead:

- the **client address** as the server sees it: the TCP peer, or, behind a reverse proxy, the entry
  that the proxy appended to the configured header (``VICHAT_TRUSTED_PROXY_HEADER``, counted
  ``VICHAT_TRUSTED_PROXY_HOPS`` from the right; entries further left were written by the client
  and are ignored). IPv6 addresses are reduced to their /64 network, which one host can fill at
  will. Only ``HMAC-SHA256(salt, address)`` is kept, never the address itself;
- a **session token** the server issues the first time it sees a Gradio session, signed with a key
  derived from the salt and bound to the address hash. Issuing one counts against the address's
  session limit (``VICHAT_SESSION_RATE``), so a script that resets its session for every vote runs
  into that limit, and into the per-address vote limit, long before it moves the leaderboard.

The salt comes from ``VICHAT_SESSION_SALT`` or, failing that, a random salt created once and kept
next to the votes database (mode 0600), so hashes stay stable across restarts.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..records import VichatError

SALT_FILE = "session-salt"
_MAX_SESSIONS = 200_000  # tokens remembered (oldest forgotten first); a forgotten one is reissued


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
    """Keyed hashing of identifiers: ``hasher(value)`` is ``HMAC-SHA256(salt, value)``, 32 hex."""

    def __init__(self, salt: str) -> None:
        self._key = salt.encode("utf-8")

    def __repr__(self) -> str:  # the salt must never reach a log
        return "SessionHasher(<salt hidden>)"

    def __call__(self, session_hash: str | None) -> str:
        raw = (session_hash or "anonymous").encode("utf-8")
        return hmac.new(self._key, raw, hashlib.sha256).hexdigest()[:32]

    def derive(self, purpose: str) -> bytes:
        """A key for ``purpose`` (domain separation: one salt, independent keys)."""
        return hmac.new(self._key, b"vichat-key:" + purpose.encode(), hashlib.sha256).digest()


class SessionLimitError(VichatError):
    """Too many new sessions from one address; the message is for the visitor. ``address`` is the
    address's salted hash (for the log line of the refusal), never the address itself."""

    def __init__(self, message: str, address: str = "") -> None:
        super().__init__(message)
        self.address = address


@dataclass(frozen=True)
class Visitor:
    """What limits and votes are keyed on: hashes only."""

    address: str  # HMAC of the client address (its /64 for IPv6); "" when the server saw none
    session: str  # id of the server-issued session token


def client_address(request: Any, header: str | None = None, hops: int = 1) -> str:
    """The client's address as this server can vouch for it (see the module docstring): the
    ``hops``-th entry from the right of ``header`` when configured and present, else the TCP peer.
    An IPv6 address becomes its /64 network; an unreadable one is returned as is."""
    raw = ""
    if header:
        headers = getattr(request, "headers", None) or {}
        value = headers.get(header, "") if hasattr(headers, "get") else ""
        entries = [e.strip() for e in str(value).split(",") if e.strip()]
        if entries:
            raw = entries[-hops] if len(entries) >= hops else entries[0]
    if not raw:
        client = getattr(request, "client", None)
        raw = str(getattr(client, "host", "") or "")
    try:
        ip = ipaddress.ip_address(raw.strip("[]"))
    except ValueError:
        return raw
    if ip.version == 6:
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class Identities:
    """Turns a Gradio request into a :class:`Visitor`, issuing session tokens as needed.

    ``take_session(address_hash)`` records one new session for the address and returns 0, or the
    seconds to wait when the address is over its session limit (the persisted limiter)."""

    def __init__(self, hasher: SessionHasher, take_session: Callable[[str], float], header: str | None = None,
                 hops: int = 1) -> None:
        self.hasher = hasher
        self._token_key = hasher.derive("session-token")
        self._take_session = take_session
        self.header = header
        self.hops = hops
        self._tokens: OrderedDict[str, str] = OrderedDict()  # Gradio session hash -> signed token
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Identities(header={self.header!r}, hops={self.hops})"

    def address(self, request: Any) -> str:
        raw = client_address(request, self.header, self.hops)
        return self.hasher("address:" + raw) if raw else ""

    def sign(self, token_id: str, issued: int, address: str) -> str:
        mac = hmac.new(self._token_key, f"{token_id}|{issued}|{address}".encode(), hashlib.sha256).hexdigest()
        return f"{token_id}.{issued}.{mac[:32]}"

    def verify(self, token: str, address: str) -> str | None:
        """The token's id if ``token`` was issued by this server for ``address``, else ``None``."""
        try:
            token_id, issued, _ = token.split(".")
            expected = self.sign(token_id, int(issued), address)
        except ValueError:
            return None
        return token_id if hmac.compare_digest(expected, token) else None

    def visitor(self, request: Any) -> Visitor:
        """The visitor behind ``request``; raises :class:`SessionLimitError` when a new session
        would exceed the address's limit."""
        address = self.address(request)
        gradio_session = str(getattr(request, "session_hash", None) or "")
        with self._lock:
            token = self._tokens.get(gradio_session)  # "" (no Gradio session: a direct call) is one key too
        if token is not None:
            token_id = self.verify(token, address)
            if token_id is not None:
                return Visitor(address, token_id)
            # Same Gradio session from another address (a phone changing networks, or a session
            # hash that leaked): a new token, counted against the new address.
        wait = self._take_session(address)
        if wait:
            raise SessionLimitError(
                f"Có quá nhiều phiên mới từ địa chỉ mạng của bạn; hãy thử lại sau {math.ceil(wait / 60)} phút "
                "(hoặc tiếp tục trong trang đang mở).", address)
        token_id = secrets.token_hex(16)
        token = self.sign(token_id, int(time.time()), address)
        with self._lock:
            current = self._tokens.get(gradio_session)
            if current is not None and current != token and self.verify(current, address):
                return Visitor(address, current.split(".")[0])  # a concurrent request issued one first
            self._tokens[gradio_session] = token
            while len(self._tokens) > _MAX_SESSIONS:
                self._tokens.popitem(last=False)
        return Visitor(address, token_id)
