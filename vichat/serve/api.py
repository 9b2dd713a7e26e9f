"""The contract between model backends and the app: what a chat model offers and how it streams.

The app (vichat/app) only talks to a :class:`ChatBackend`; local engines (one base, many LoRA
adapters) and remote OpenAI-compatible servers both implement it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterator, Protocol, Sequence, runtime_checkable

from ..data.templates import Turn
from ..records import VichatError
from ..specs import Decoding


class ModelError(VichatError):
    """A model failed to load or generate; the message is safe to show in the page."""


@dataclass(frozen=True)
class ModelInfo:
    """A model the app can offer. ``name`` is what votes and reports store."""

    name: str
    description: str = ""
    template: str = "chat"
    decoding: Decoding = field(default_factory=Decoding)
    backend: str = "local"


class Queued(str):
    """A stream item that carries no text: the request waits for a place in the batch.

    ``position`` is its place in the queue (1: next to start); ``Queued(0)`` says it has started.
    It is an empty ``str``, so a consumer that only concatenates deltas is unaffected; one that
    wants to show the wait checks ``isinstance(item, Queued)``. Only local engines yield it, and
    only to requests that had to wait.
    """

    position: int

    def __new__(cls, position: int) -> "Queued":
        item = super().__new__(cls, "")
        item.position = position
        return item

    def __repr__(self) -> str:
        return f"Queued({self.position})"


#: One earlier turn: (user message, assistant answer).


@runtime_checkable
class ChatBackend(Protocol):
    def models(self) -> list[ModelInfo]:
        """Every model this backend serves."""

    def stream(
        self,
        model: str,
        message: str,
        history: Sequence[Turn] = (),
        *,
        template: str | None = None,
        decoding: Decoding | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[str]:
        """Yield the answer to ``message`` as text deltas, as they are generated (a local engine
        also yields empty :class:`Queued` items while the request waits for the batch).

        Stops at EOS, at the template's stop markers (never yielded), at ``max_new_tokens``, or
        when ``cancel`` is set. Raises :class:`ModelError` for an unknown model or a failure.
        """
