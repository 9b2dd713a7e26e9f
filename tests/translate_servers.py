"""Loopback servers that speak Google Translate v2 and OpenAI chat-completions wire formats.

Tests (and bench/translate.py) point the real plugins at them: ``VICHAT_GOOGLE_TRANSLATE_URL``
for google, ``OPENAI_BASE_URL`` for the official openai client. A script of actions makes the
next requests misbehave (429 with Retry-After, 500, slow answers, malformed JSON, a short list,
damaged markers); every request's texts are recorded so a test can count what was paid for.
"""

from __future__ import annotations

import json
import re
import threading
import time
import unicodedata
from collections import Counter, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

# The mistakes Google Translate made on Alpaca's Python: it translated code words.
WORDS = {"print": "in", "else": "khác", "for": "cho", "in": "trong"}
_WORD_RE = re.compile(r"\b(print|else|for|in)\b")


def word_substitute(text: str) -> str:
    """Translate like a careless MT system: every code word becomes Vietnamese."""
    return _WORD_RE.sub(lambda m: WORDS[m.group()], text)


def fake_vi(text: str) -> str:
    """The servers' default "translation": deterministic, visibly different, marker-preserving."""
    return "VI: " + word_substitute(text)


@dataclass
class Seen:
    api: str
    texts: list[str]
    time: float
    query: dict = field(default_factory=dict)
    body: dict = field(default_factory=dict)


class FakeServer:
    """A ThreadingHTTPServer on 127.0.0.1:0 answering both APIs; use as a context manager."""

    def __init__(self, translate: Callable[[str], str] = fake_vi, delay: float = 0.0, delay_per_char: float = 0.0) -> None:
        self.translate = translate
        self.delay = delay  # seconds before every answer (network + queueing)
        self.delay_per_char = delay_per_char  # plus this per character received (work)
        self.script: deque = deque()
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    server._handle(self, raw)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and went away

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        # A short poll interval: shutdown() waits for it, once per test.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    # -- control -------------------------------------------------------------------------
    def __enter__(self) -> "FakeServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def google_url(self) -> str:
        return self.base + "/language/translate/v2"

    @property
    def openai_url(self) -> str:
        return self.base + "/v1"

    def push(self, *actions: Any) -> None:
        """Queue actions for the next requests, one each: ``("status", 429, {"Retry-After": "1"})``,
        ``("status", 500)``, ``("sleep", 1.0)``, ``("malformed",)``, ``("short",)``, ``("fenced",)``,
        ``("damage",)`` (drop the markers), ``("ok",)``."""
        with self.lock:
            self.script.extend(actions)

    @property
    def requests(self) -> int:
        return len(self.seen)

    def text_counts(self) -> Counter:
        """How many requests carried each text."""
        counts: Counter = Counter()
        with self.lock:
            for s in self.seen:
                counts.update(s.texts)
        return counts

    # -- serving -------------------------------------------------------------------------
    def _reply(self, h: BaseHTTPRequestHandler, status: int, body: Any, headers: dict | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body, ensure_ascii=False).encode("utf-8")
        h.send_response(status)
        h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _handle(self, h: BaseHTTPRequestHandler, raw: bytes) -> None:
        url = urlparse(h.path)
        body = json.loads(raw or b"{}")
        if url.path.endswith("/language/translate/v2"):
            api = "google"
            texts = body.get("q") or []
            texts = [texts] if isinstance(texts, str) else list(texts)
        elif url.path.endswith("/chat/completions"):
            api = "openai"
            user = [m for m in body.get("messages", []) if m.get("role") == "user"][-1]["content"]
            texts = [item["text"] for item in json.loads(user)]
        else:
            self._reply(h, 404, {"error": {"message": f"no route {url.path}"}})
            return
        with self.lock:
            self.seen.append(Seen(api, texts, time.monotonic(), parse_qs(url.query), body))
            action = self.script.popleft() if self.script else ("ok",)
        if self.delay or self.delay_per_char:
            time.sleep(self.delay + self.delay_per_char * sum(map(len, texts)))
        kind = action[0]
        if kind == "status":
            status, headers = action[1], (action[2] if len(action) > 2 else {})
            msg = {"error": {"code": status, "message": f"fake {status}", "errors": [{"reason": "backendError"}],
                             "type": "server_error", "status": "UNAVAILABLE"}}
            if len(action) > 3:
                msg = action[3]
            self._reply(h, status, msg, headers)
            return
        if kind == "sleep":
            time.sleep(action[1])
        if kind == "malformed":
            self._reply(h, 200, b'{"data": {"translations": [ {"translatedText": "oops"')
            return
        out = [self.translate(t) for t in texts]
        if kind == "short":
            out = out[:-1]
        if kind == "damage":
            out = [re.sub(r"\u27e6\d+\u27e7", "", t) for t in out]
        if api == "google":
            if api == "google" and not (body.get("format") == "text" and url.query.startswith("key=")):
                self._reply(h, 400, {"error": {"code": 400, "message": "expected format=text and ?key="}})
                return
            self._reply(h, 200, {"data": {"translations": [{"translatedText": t} for t in out]}})
            return
        content = json.dumps([{"id": i, "text": t} for i, t in enumerate(out, 1)], ensure_ascii=False)
        if kind == "fenced":
            content = "Here you go:\n```json\n" + content + "\n```"
        if kind == "openai-malformed":
            content = "Sorry, I cannot do that."
        self._reply(h, 200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })


def decomposed_vi(text: str) -> str:
    """A translation in NFD (as some servers send): 'Tiếng Việt' with combining marks."""
    return unicodedata.normalize("NFD", "Tiếng Việt: " + text)
