"""Helpers for the app tests: run the real Gradio app on 127.0.0.1 with a fake backend."""

from __future__ import annotations

import os
import random
import re
import socket
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from vichat.app.app import build_app, launch  # noqa: E402
from vichat.app.settings import AppSettings, Rate  # noqa: E402
from vichat.serve.api import Queued  # noqa: E402

BATTLE_ID = re.compile(r"mã trận ([0-9a-f]{16})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_settings(tmp: Path, **changes) -> AppSettings:
    """Generous limits (tests drive many requests from one address) and a private database; the
    leaderboard counts every vote (no per-address cap: all test clients share 127.0.0.1)."""
    off = Rate(0, 60)
    base = AppSettings(votes_db=tmp / "votes.sqlite", session_salt="test-salt", vote_rate=off, message_rate=off,
                       judge_rate=off, address_vote_rate=off, address_message_rate=off, address_judge_rate=off,
                       session_rate=off, leaderboard_address_cap=0, bootstrap_rounds=200, generation_concurrency=8)
    return base.with_(**changes)


test_settings.__test__ = False  # not a test, despite the name


@contextmanager
def running_app(backend, settings: AppSettings, seed: int = 0) -> Iterator[tuple[object, str]]:
    """Build and launch the app in this process (Gradio serves it from a thread); yield (demo, url)."""
    demo = build_app(backend, settings, rng=random.Random(seed))
    launch(demo, "127.0.0.1", free_port(), prevent_thread_lock=True, quiet=True)
    try:
        yield demo, demo.local_url
    finally:
        demo.close()


def votes_in(db: Path) -> list[dict]:
    """Rows of the votes table, read straight from the SQLite file."""
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        return [dict(r) for r in con.execute("SELECT * FROM votes ORDER BY id")]


def text_of(chatbot_value) -> list[str]:
    """Message texts of a Chatbot value as gradio_client returns it (content may be blocks)."""
    if isinstance(chatbot_value, dict) and "value" in chatbot_value:
        chatbot_value = chatbot_value["value"]
    out = []
    for m in chatbot_value or []:
        c = m["content"]
        out.append(c if isinstance(c, str) else "".join(b.get("text", "") for b in c if isinstance(b, dict)))
    return out


class ScriptedBackend:
    """A canned backend with three test triggers in the message: ``#chậm`` streams slowly (queue
    tests), ``#html`` answers with :attr:`payload` (sanitiser tests) and ``#chờ`` first waits in a
    pretend engine queue, places 2 then 1, :attr:`slow_s` each (how the page shows a wait)."""

    def __init__(self, inner, slow_s: float = 0.2, payload: str = "") -> None:
        self.inner = inner
        self.slow_s = slow_s
        self.payload = payload
        self.calls = inner.calls

    def models(self):
        return self.inner.models()

    def stream(self, model, message, history=(), **kwargs):
        if "#html" in message:
            self.calls.append({"model": model, "message": message, "history": list(history)})
            yield self.payload
            return
        if "#chờ" in message:
            for place in (2, 1):
                yield Queued(place)
                time.sleep(self.slow_s)
            yield Queued(0)
        for delta in self.inner.stream(model, message, history, **kwargs):
            if "#chậm" in message:
                time.sleep(self.slow_s)
            yield delta
