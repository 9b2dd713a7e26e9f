"""Gradio's queue and routes, bounded for a public Space.

- **Cheap actions never wait behind generation.** Gradio's ``max_size`` counts every waiting event,
  so a queue full of ``/chat`` calls also refused votes and the leaderboard. :func:`bound_queue`
  keeps Gradio's own limit as a far-off hard cap and enforces the configured size per expensive
  group (``generate``, ``judge``) instead: a full generation queue refuses new generations only.
  Votes, the leaderboard and exports sit in their own concurrency groups, so they run beside
  generation, and a visitor waiting for a generation sees Gradio's queue position.
- **Private endpoints stay private.** Gradio 6 hides ``api_visibility="private"`` events from the
  API page and its client libraries but still answers them by name on ``/gradio_api/call/...`` and
  ``/gradio_api/run/...``. :class:`PrivateEndpoints` refuses those routes for private events. The
  page calls ``queue=False`` events by name on ``/gradio_api/run/<name>``, so private events are
  queued instead: the page reaches them through the queue by index, which no server can tell
  apart from a script doing the same, so private handlers are also written to be harmless.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

log = logging.getLogger("vichat.app")

#: Concurrency groups whose waiting events are bounded by the configured queue size.
EXPENSIVE_GROUPS = ("generate", "judge")
#: Gradio's own bound on all waiting events together: far above any real load, it only caps memory.
HARD_CAP = 5000

_NAMED_ROUTE = re.compile(r"/(?:call/v2|call|run|api)/([^/]+)/?$")


def bound_queue(demo: Any, max_size: int | None) -> None:
    """Refuse a new event of an expensive group when ``max_size`` of that group already wait
    (``None``: no bound); every other event is admitted up to :data:`HARD_CAP`."""
    queue = demo._queue  # Gradio has no public hook for admission; push() is the one entry point
    original = queue.push

    async def push(body: Any, request: Any, username: Any) -> Any:
        if max_size is not None and body.fn_index is not None:
            fns = demo.fns
            fn = fns.get(body.fn_index) if hasattr(fns, "get") else None
            group = getattr(fn, "concurrency_id", None)
            if group in EXPENSIVE_GROUPS:
                waiting = queue.event_queue_per_concurrency_id.get(group)
                if waiting is not None and len(waiting.queue) >= max_size:
                    log.info("refused %s: %d already waiting", group, len(waiting.queue))
                    return (False, f"Hàng đợi đã đầy ({len(waiting.queue)} yêu cầu đang chờ); hãy thử lại sau ít "
                                   f"phút. Queue is full. Max size is {max_size}.", "queue_full")
        return await original(body, request, username)

    queue.push = push


#: The name the page posts ``queue=False`` events without a public name to (with their index):
#: Gradio's own cancel events for the Stop buttons. Never refused.
_BY_INDEX = "predict"


class PrivateEndpoints:
    """ASGI middleware: ``POST .../call|run|api/<name>`` is 404 unless ``<name>`` is a public event
    (private ones, and names that do not exist: Gradio would log a traceback for each probe), or
    the index-based route the page itself uses for Gradio's cancel events."""

    def __init__(self, app: Any, blocks: Any) -> None:
        self.app = app
        self.blocks = blocks
        self._names: frozenset[str] | None = None

    def public_names(self) -> frozenset[str]:
        if self._names is None:
            self._names = frozenset(
                fn.api_name for fn in self.blocks.fns.values()
                if getattr(fn, "api_visibility", "public") != "private" and isinstance(fn.api_name, str)
            )
        return self._names

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and scope.get("method") == "POST":
            match = _NAMED_ROUTE.search(scope.get("path", ""))
            if match and match.group(1) != _BY_INDEX and match.group(1) not in self.public_names():
                body = json.dumps({"detail": f"no public endpoint named {match.group(1)!r}"}).encode()
                await send({"type": "http.response.start", "status": 404,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
