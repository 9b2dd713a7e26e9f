"""One thread decodes for every active request, one token each in turn (round-robin).

Why one scheduler rather than a lock around ``generate`` per user: the arena streams two answers
side by side, and with a lock the second would wait for the whole first answer. Here every active
request advances one token per round, each with its own KV cache, so all streams progress together
and a new request joins at the next round (its first step is the prompt's prefill).

Adapters: before a request's step the runner activates that request's LoRA adapter (or disables
adapters for the bare base) under its lock; requests are visited grouped by adapter, and the order
flips every round, so a round costs one switch per distinct adapter, not per request. Only this
thread runs forward passes, so a switch can never happen in the middle of another request's step.

Results go to each request's queue as ``("delta", text)``, ``("end", None)`` or ``("error", exc)``;
:func:`consume` turns the queue back into the iterator the backend returns.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .api import ModelError
from .sampling import Sampler
from .text import TokenTextStream

log = logging.getLogger("vichat.serve")

POLL_SECONDS = 0.05  # how often a waiting consumer looks at its cancel event


@dataclass(eq=False)
class Request:
    """One generation in flight. ``adapter`` is the runner's adapter key, ``None`` for the bare base."""

    adapter: str | None
    prompt_ids: list[int]
    sampler: Sampler
    text: TokenTextStream
    max_new_tokens: int
    eos_ids: frozenset[int]
    cancel: threading.Event | None = None
    out: "queue.SimpleQueue[tuple[str, Any]]" = field(default_factory=queue.SimpleQueue)
    closed: threading.Event = field(default_factory=threading.Event)  # the consumer went away
    generated: list[int] = field(default_factory=list)
    cache: Any = None
    done: bool = False

    def cancelled(self) -> bool:
        return self.closed.is_set() or (self.cancel is not None and self.cancel.is_set())

    def emit(self, delta: str) -> None:
        if delta:
            self.out.put(("delta", delta))

    def finish(self, error: BaseException | None = None) -> None:
        self.done = True
        self.cache = None  # the KV cache is the big part: free it as soon as the answer ends
        self.out.put(("error", error) if error is not None else ("end", None))


class Scheduler:
    """Round-robin decoding over the requests of one runner (one base model in memory)."""

    def __init__(self, runner: Any, name: str = "vichat-scheduler") -> None:
        self.runner = runner
        self.name = name
        self._cond = threading.Condition()
        self._pending: list[Request] = []
        self._active: list[Request] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self._reverse = False
        self.steps = 0  # forward passes run, for tests and benchmarks

    # -- public ------------------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        with self._cond:
            if self._closed:
                raise ModelError("the model server is shutting down")
            self._pending.append(request)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def active(self) -> int:
        """Requests being decoded or waiting to start."""
        with self._cond:
            return len(self._pending) + sum(not r.done for r in self._active)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread; requests still running end with an error."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # -- the loop ----------------------------------------------------------------------------
    def _next_round(self) -> list[Request] | None:
        with self._cond:
            while not self._closed and not self._pending and not self._active:
                self._cond.wait()
            if self._closed:
                for r in self._pending + self._active:
                    if not r.done:
                        r.finish(ModelError("the model server is shutting down"))
                self._pending.clear()
                self._active.clear()
                return None
            self._active.extend(self._pending)
            self._pending.clear()
            self._reverse = not self._reverse
            # Stable sort by adapter; flipping the order each round makes the last adapter of one
            # round the first of the next, saving a switch.
            return sorted(self._active, key=lambda r: r.adapter or "", reverse=self._reverse)

    def _loop(self) -> None:
        while True:
            batch = self._next_round()
            if batch is None:
                return
            for req in batch:
                if req.done:
                    continue
                if req.cancelled():
                    req.finish()
                    continue
                try:
                    self._step(req)
                except Exception as exc:  # noqa: BLE001 - one failed request must not stop the others
                    log.exception("generation failed")
                    reset = getattr(self.runner, "reset", None)
                    if reset is not None:  # a step that failed half-way may have left adapters half-switched
                        reset()
                    req.finish(ModelError(f"generation failed: {type(exc).__name__}: {_short(exc)}"))
            with self._cond:
                self._active = [r for r in self._active if not r.done]

    def _step(self, req: Request) -> None:
        if req.cache is None:
            req.cache = self.runner.new_cache()
            inputs = req.prompt_ids
        else:
            inputs = req.generated[-1:]
        logits = self.runner.step(req.adapter, inputs, req.cache)
        self.steps += 1
        token = req.sampler(logits, req.prompt_ids + req.generated)
        if token in req.eos_ids:
            req.emit(req.text.flush())
            req.finish()
            return
        req.generated.append(token)
        req.emit(req.text.push(token))
        if req.text.stopped:
            req.finish()
        elif len(req.generated) >= req.max_new_tokens:
            req.emit(req.text.flush())
            req.finish()


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def consume(req: Request, on_exit: Callable[[], None] | None = None) -> Iterator[str]:
    """Yield ``req``'s deltas as the scheduler produces them; stop when it ends or is cancelled.

    Leaving the loop early (``break``, ``close()``, garbage collection) marks the request closed, so
    the scheduler drops it at its next turn and frees its cache.
    """
    try:
        while True:
            if req.cancel is not None and req.cancel.is_set():
                return
            try:
                kind, value = req.out.get(timeout=POLL_SECONDS)
            except queue.Empty:
                continue
            if kind == "delta":
                if req.cancel is not None and req.cancel.is_set():
                    return
                yield value
            elif kind == "end":
                return
            else:
                raise value
    finally:
        req.closed.set()
        if on_exit is not None:
            on_exit()


__all__ = ["Request", "Scheduler", "consume"]
