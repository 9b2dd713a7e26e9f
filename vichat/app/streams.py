"""Run several answer streams at once and merge their progress into one generator.

The arena's two sides must stream at the same time, not one after the other (FastChat's fault):
each side's ``backend.stream`` runs in its own thread and pushes deltas onto one queue; the merged
generator drains the queue and yields every side's text so far whenever any side progresses.
A side that waits for a place in a local engine's batch carries its place in the queue
(:class:`vichat.serve.api.Queued` items) in its state, apart from its text.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

from ..serve.api import Queued

#: Starts one side's stream; it must stop soon after the event is set.
StreamFactory = Callable[[threading.Event], Iterator[str]]


@dataclass(frozen=True)
class SideState:
    """One side's progress: the text so far, whether it finished, its error if it failed, and its
    place in the engine's queue while it waits with no text yet (``position`` 0: not waiting)."""

    text: str = ""
    done: bool = False
    error: BaseException | None = None
    position: int = 0

    def add(self, delta: str) -> "SideState":
        """This state after one stream item: a text delta appended (the wait is over), or, for a
        :class:`Queued` item before any text, the new place in the queue. The place is never part
        of ``text``, so it cannot end up in an answer."""
        if isinstance(delta, Queued):
            return self if self.text else replace(self, position=delta.position)
        return replace(self, text=self.text + delta, position=0)


_END = object()


def merge_streams(
    factories: Sequence[StreamFactory], stop: threading.Event | None = None, poll_s: float = 0.1
) -> Iterator[tuple[SideState, ...]]:
    """Yield a tuple of :class:`SideState` (one per factory) each time any stream progresses.

    One side failing does not stop the others: its state carries the error. Setting ``stop`` (the
    Stop button), or closing this generator (Gradio does when an event is cancelled), sets the
    cancel event every stream sees, so the backends stop generating.
    """
    cancel = threading.Event()
    updates: queue.Queue = queue.Queue()
    states = [SideState() for _ in factories]

    def run(index: int, factory: StreamFactory) -> None:
        try:
            for delta in factory(cancel):
                if cancel.is_set():
                    break
                updates.put((index, delta))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, never lost in a thread
            updates.put((index, exc))
        updates.put((index, _END))

    threads = [
        threading.Thread(target=run, args=(k, f), name=f"vichat-stream-{k}", daemon=True)
        for k, f in enumerate(factories)
    ]
    for t in threads:
        t.start()
    try:
        pending = len(threads)
        while pending:
            try:
                items = [updates.get(timeout=poll_s)]
            except queue.Empty:
                if stop is not None and stop.is_set():
                    break
                continue
            while True:  # coalesce everything already queued into one update
                try:
                    items.append(updates.get_nowait())
                except queue.Empty:
                    break
            for index, item in items:
                state = states[index]
                if item is _END:
                    states[index] = replace(state, done=True)
                    pending -= 1
                elif isinstance(item, BaseException):
                    states[index] = replace(state, error=item)
                elif not state.done:
                    states[index] = state.add(item)
            yield tuple(states)
            if stop is not None and stop.is_set():
                break
    finally:
        cancel.set()
