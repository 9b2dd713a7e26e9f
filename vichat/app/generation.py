"""Generation as the tabs use it: one answer, or two side by side, as accumulated text.

These are the only functions that touch the model, so they are the ones ``@gpu`` (ZeroGPU)
decorates. Their arguments are plain picklable values (names, strings, a :class:`Decoding`, a stop
key): ZeroGPU may run them in a GPU worker. The backend is looked up from a module-level slot set
by :func:`vichat.app.app.build_app`, never passed as an argument.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator, Sequence

from ..serve.api import ChatBackend, Turn
from ..specs import Decoding
from .gpu import gpu
from .streams import SideState, merge_streams

_backend: ChatBackend | None = None


def set_backend(backend: ChatBackend) -> None:
    """Make ``backend`` the one every tab generates with."""
    global _backend
    _backend = backend


def get_backend() -> ChatBackend:
    if _backend is None:
        raise RuntimeError("no chat backend: build the app with build_app(backend, settings) first")
    return _backend


class StopRegistry:
    """The Stop buttons: one cancel event per (session, tab) for the generation in progress."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def start(self, key: str) -> threading.Event:
        """A fresh event for a new generation under ``key`` (an older one is stopped)."""
        event = threading.Event()
        with self._lock:
            old = self._events.get(key)
            if old is not None:
                old.set()
            self._events[key] = event
        return event

    def get(self, key: str | None) -> threading.Event | None:
        with self._lock:
            return self._events.get(key) if key else None

    def stop(self, key: str) -> bool:
        """Stop the generation under ``key``; whether one was running."""
        with self._lock:
            event = self._events.get(key)
        if event is None:
            return False
        event.set()
        return True

    def finish(self, key: str, event: threading.Event) -> None:
        """Forget ``event`` once its generation ended (unless a newer one replaced it)."""
        event.set()
        with self._lock:
            if self._events.get(key) is event:
                del self._events[key]


STOPS = StopRegistry()


@dataclass(frozen=True)
class SideRequest:
    """What one side of a battle generates."""

    model: str
    message: str
    history: tuple[Turn, ...]
    template: str | None
    decoding: Decoding


def waiting_text(position: int) -> str:
    """What a visitor sees while the engine's batch is full (``position`` 1: next to start)."""
    return f"⏳ Đang chờ đến lượt: vị trí {position} trong hàng đợi…"


def shown(state: SideState) -> str:
    """What one answer shows the visitor: its text so far or, while it waits for a place in the
    engine's batch with nothing answered yet, its place in the queue. Only for display: the answer
    kept (history, battles, votes) is ``state.text``, which never holds the waiting text."""
    return waiting_text(state.position) if state.position and not state.text else state.text


@gpu
def stream_answer(
    model: str, message: str, history: Sequence[Turn], template: str | None, decoding: Decoding,
    stop_key: str | None = None,
) -> Iterator[str]:
    """Yield the answer so far (accumulated text) each time the model adds to it; while the request
    waits for a place in the engine's batch, the answer shows its place in the queue instead
    (:func:`shown`), and a request stopped while queued ends with an empty answer."""
    cancel = STOPS.get(stop_key) or threading.Event()
    state = SideState()
    stream = get_backend().stream(model, message, tuple(history), template=template, decoding=decoding, cancel=cancel)
    try:
        for delta in stream:
            before, state = state, state.add(delta)
            if state != before:
                yield shown(state)
            if cancel.is_set():
                break
        if state.position:  # stopped while queued: the place in the queue is no answer
            yield ""
    finally:
        cancel.set()  # also when the consumer closed us: the backend stops generating
        close = getattr(stream, "close", None)
        if close is not None:
            close()


@gpu
def stream_pair(sides: tuple[SideRequest, SideRequest], stop_key: str | None = None) -> Iterator[tuple[SideState, ...]]:
    """Both sides at once: yield both states whenever either side progresses. A side waiting for a
    place in the engine's batch has its place in ``position`` (show it with :func:`shown`)."""
    backend = get_backend()

    def factory(side: SideRequest):
        def start(cancel: threading.Event) -> Iterator[str]:
            return backend.stream(side.model, side.message, side.history, template=side.template,
                                  decoding=side.decoding, cancel=cancel)
        return start

    yield from merge_streams([factory(s) for s in sides], stop=STOPS.get(stop_key))
