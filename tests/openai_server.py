"""A loopback OpenAI chat-completions server that judges like GPT-4 does in the paper.

It reuses the HTTP plumbing of :class:`translate_servers.FakeServer` (threading server, action
script, ``seen`` log) and answers judge conversations instead of translation batches: the first
turn gets "s1 s2" on the first line and an explanation, a re-ask gets the bare scores, and an
aspect request gets JSON. An answer's score is the number in a ``[[N]]`` marker in its text, else
derived from its length. Scripted actions (``push``): ``("status", code, headers)``,
``("sleep", s)``, ``("hang", s)`` (answer nothing for ``s`` seconds), ``("malformed",)`` (a broken
JSON body), ``("text", content)`` (reply with exactly this), ``("ok",)``.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Callable

from translate_servers import FakeServer, Seen

_ANSWER = re.compile(r"\[The Start of Assistant ([12])'s Answer\]\n(.*?)\n\n\[The End of Assistant \1's Answer\]", re.S)
_MARKER = re.compile(r"\[\[(\d+)\]\]")


def score_of(answer: str) -> int:
    """The score the fake judge gives an answer: its ``[[N]]`` marker, else 1 + len // 20 (max 10)."""
    m = _MARKER.search(answer)
    return int(m.group(1)) if m else min(10, 1 + len(answer) // 20)


def conversation_kind(messages: list[dict]) -> str:
    """``judge`` (first turn), ``reask`` or ``aspects`` (a follow-up turn)."""
    if len(messages) <= 2:
        return "judge"
    return "aspects" if "JSON" in messages[-1]["content"] else "reask"


class JudgeServer(FakeServer):
    """Use as a context manager; ``openai_url`` goes into ``OPENAI_BASE_URL``."""

    def __init__(self, delay: float = 0.0, first_bonus: int = 0,
                 reply: Callable[[str, int, int], str] | None = None) -> None:
        super().__init__(delay=delay)
        self.first_bonus = first_bonus  # a position-biased judge: Assistant 1 gets this much more
        self.reply = reply
        self.answered: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests the server held at once: concurrency, not timing
        # What OpenAI sends with every answer (a tier-4-like account); None: no rate-limit headers.
        self.limit_headers: dict[str, str] | None = {"x-ratelimit-limit-requests": "10000",
                                                      "x-ratelimit-limit-tokens": "2000000"}

    def scores(self, user: str) -> tuple[int, int]:
        answers = {int(n): text for n, text in _ANSWER.findall(user)}
        return min(10, score_of(answers.get(1, "")) + self.first_bonus), score_of(answers.get(2, ""))

    def content_for(self, kind: str, user: str) -> str:
        s1, s2 = self.scores(user)
        if kind == "reask":
            return f"{s1} {s2}"
        if kind == "aspects":
            side = lambda s: {"helpfulness": s, "relevance": s, "accuracy": s, "level_of_details": s}  # noqa: E731
            return "```json\n" + json.dumps({"assistant_1": side(s1), "assistant_2": side(s2)}) + "\n```"
        if self.reply is not None:
            return self.reply(user, s1, s2)
        return f"{s1} {s2}\nAssistant 1 scores {s1} and Assistant 2 scores {s2} for helpfulness and detail."

    def _handle(self, h: Any, raw: bytes) -> None:
        if not h.path.endswith("/chat/completions"):
            self._reply(h, 404, {"error": {"message": f"no route {h.path}"}})
            return
        body = json.loads(raw or b"{}")
        messages = body.get("messages", [])
        user = next((m["content"] for m in messages if m.get("role") == "user"), "")
        kind = conversation_kind(messages)
        seen = Seen("judge-" + kind, [user], time.monotonic(), body=body)
        with self.lock:
            self.seen.append(seen)
            action = self.script.popleft() if self.script else ("ok",)
        if self.delay:
            with self.lock:
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            time.sleep(self.delay)
            with self.lock:
                self.in_flight -= 1
        if action[0] == "status":
            headers = action[2] if len(action) > 2 else {}
            msg = action[3] if len(action) > 3 else {"error": {"message": f"fake {action[1]}", "type": "server_error"}}
            self._reply(h, action[1], msg, headers)
            return
        if action[0] in ("sleep", "hang"):
            time.sleep(action[1])
            if action[0] == "hang":
                return
        if action[0] == "malformed":
            self._reply(h, 200, b'{"id": "chatcmpl-x", "choices": [ {"message": ')
            return
        content = action[1] if action[0] == "text" else self.content_for(kind, user)
        with self.lock:
            self.answered.append(seen)
        self._reply(h, 200, {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": len(raw) // 4, "completion_tokens": max(1, len(content) // 4),
                      "total_tokens": len(raw) // 4 + max(1, len(content) // 4)},
        }, self.limit_headers)

    def kinds(self) -> list[str]:
        return [s.api.removeprefix("judge-") for s in self.seen]
