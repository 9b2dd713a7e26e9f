"""Continuous batching: one thread runs one forward pass per step over every active request.

The requests of one base model decode together, whatever adapter each uses (the runner mixes
adapters inside a batch, :mod:`vichat.serve.runner`). Each loop iteration:

1. **admit**: waiting requests join, first come first served (an idle engine gathers arrivals for
   5 ms, so requests sent together share their prefill), while the batch stays within
   ``max_batch_size`` requests and ``max_batch_tokens`` cache positions: the rows are left-padded
   to the longest, so the batch counts rows x the longest prompt + ``max_new_tokens`` among them,
   what its KV cache can grow to (the cache layers keep up to ``GROW_BLOCK`` spare positions per
   row on top, :mod:`vichat.serve.runner`). The others wait; each waiting request
   is told its place in the queue (a :class:`vichat.serve.api.Queued` item in its stream).
2. **prefill** one chunk (``prefill_chunk`` tokens in all, split over the joining requests' rows)
   of the joining requests' prompts, in their own small left-padded batch and cache. A long prompt
   therefore costs the others at most one chunk's forward pass per step, not its whole prefill
   (with nobody decoding, the prompts go in one pass). After the last chunk each joining request samples
   its first token and its cache rows are appended to the decoding batch.
3. **decode** one token for every request in the batch, in one forward pass.

A request leaves as soon as it ends (EOS, stop marker, ``max_new_tokens``, cancel, consumer gone):
its cache rows are dropped at once (``batch_select_indices``-style row selection) and padding
that no remaining row needs is cut from the left, so memory follows the requests in flight.

Results go to each request's queue as ``("delta", text)``, ``("queued", position)``, ``("end",
None)`` or ``("error", exc)``; :func:`consume` turns the queue back into the iterator the backend returns.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from .api import ModelError, Queued
from .runner import append_rows, drop_left, select_rows
from .sampling import Sampler, sample_rows
from .text import TokenTextStream

log = logging.getLogger("vichat.serve")

POLL_SECONDS = 0.05  # how often a waiting consumer looks at its cancel event
MAX_BATCH_SIZE = 16
MAX_BATCH_TOKENS = 8192
PREFILL_CHUNK = 512
# With nothing decoding, the first arrival waits this long for others to arrive with it (users that
# click together, the two sides of a battle), so they share one prefill pass instead of one each.
GATHER_SECONDS = 0.005


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
    done: bool = False
    position: int = 0  # place in the queue last reported (0: not waiting)
    submitted: float = field(default_factory=time.monotonic)
    _ids: Any = field(default=None, repr=False)  # prompt + generated ids, kept by seen()

    @property
    def reserved(self) -> int:
        """Tokens this request's KV cache may grow to."""
        return len(self.prompt_ids) + self.max_new_tokens

    def cancelled(self) -> bool:
        return self.closed.is_set() or (self.cancel is not None and self.cancel.is_set())

    def emit(self, delta: str) -> None:
        if delta:
            self.out.put(("delta", delta))

    def finish(self, error: BaseException | None = None) -> None:
        if not self.done:
            self.done = True
            self.out.put(("error", error) if error is not None else ("end", None))

    def seen(self) -> Any:
        """Every id so far (prompt, then generated), as a view of one tensor kept for the request:
        rebuilding it from the lists at each step cost 1.7 ms per step at 16 rows of 1,000 ids."""
        import torch

        if self._ids is None:
            self._ids = torch.empty(len(self.prompt_ids) + self.max_new_tokens + 1, dtype=torch.long)
            self._ids[: len(self.prompt_ids)] = torch.tensor(self.prompt_ids, dtype=torch.long)
            self._ids[len(self.prompt_ids): len(self.prompt_ids) + len(self.generated)] = torch.tensor(
                self.generated, dtype=torch.long)
        return self._ids[: len(self.prompt_ids) + len(self.generated)]

    def take(self, token: int) -> None:
        """Record the sampled ``token``: emit its text, or end the request."""
        if token in self.eos_ids:
            self.emit(self.text.flush())
            self.finish()
            return
        if self._ids is not None and len(self.prompt_ids) + len(self.generated) < self._ids.shape[0]:
            self._ids[len(self.prompt_ids) + len(self.generated)] = token
        else:
            self._ids = None  # rebuilt from the lists by the next seen()
        self.generated.append(token)
        self.emit(self.text.push(token))
        if self.text.stopped:
            self.finish()
        elif len(self.generated) >= self.max_new_tokens:
            self.emit(self.text.flush())
            self.finish()


@dataclass(eq=False)
class _Joining:
    """Requests being prefilled together, chunk by chunk, before they join the decoding batch."""

    rows: list[Request]
    ids: Any  # [n, longest prompt], left-padded
    mask: Any
    cache: Any
    done: int = 0  # prompt columns already fed


class Scheduler:
    """Continuous batching over the requests of one runner (one base model in memory)."""

    def __init__(self, runner: Any, name: str = "vichat-scheduler", *, max_batch_size: int = MAX_BATCH_SIZE,
                 max_batch_tokens: int = MAX_BATCH_TOKENS, prefill_chunk: int = PREFILL_CHUNK) -> None:
        self.runner = runner
        self.name = name
        self.max_batch_size = max(1, max_batch_size)
        self.max_batch_tokens = max(1, max_batch_tokens)
        self.prefill_chunk = max(1, prefill_chunk)
        self._cond = threading.Condition()
        self._pending: list[Request] = []
        self._rows: list[Request] = []  # the decoding batch, aligned with the cache's rows
        self._cache: Any = None
        self._mask: Any = None
        self._joining: _Joining | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self.tokens = 0  # tokens sampled, for benchmarks

    # -- public ------------------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        self.runner.check(request.adapter)
        with self._cond:
            if self._closed:
                raise ModelError("the model server is shutting down")
            self._pending.append(request)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify()

    def active(self) -> int:
        """Requests being decoded, prefilled or waiting to start."""
        with self._cond:
            joining = self._joining.rows if self._joining is not None else []
            return len(self._pending) + sum(not r.done for r in self._rows + joining)

    def in_batch(self) -> int:
        """Rows in the decoding batch's KV cache (finished requests leave at once)."""
        return len(self._rows)

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread; requests still running end with an error."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    # -- the loop ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            try:
                if self._step():
                    return
            except Exception as exc:  # noqa: BLE001 - the loop outlives any bug: nobody waits forever
                # A pass's own failure is handled by _guard; this is the bookkeeping around the
                # passes (admission, joins, trimming), where a bug would otherwise end the thread and
                # leave every visitor waiting for ever. Everything in flight and queued ends with
                # the error (retrying the same state could fail the same way, in a loop), and the
                # next request starts on a clean batch.
                log.exception("the batching loop failed")
                error = ModelError(f"generation failed: {type(exc).__name__}: {_short(exc)}")
                reset = getattr(self.runner, "reset", None)
                if reset is not None:
                    reset()
                with self._cond:
                    joining = self._joining.rows if self._joining is not None else []
                    for r in self._pending + self._rows + joining:
                        r.finish(error)
                    self._pending.clear()
                    self._rows, self._cache, self._mask, self._joining = [], None, None, None

    def _step(self) -> bool:
        """One turn of the loop: admit, prefill a chunk, decode a step. True once closed."""
        with self._cond:
            while not self._closed and not self._pending and not self._rows and self._joining is None:
                self._cond.wait()
            while (not self._closed and not self._rows and self._joining is None
                   and 0 < len(self._pending) < self.max_batch_size):
                left = self._pending[0].submitted + GATHER_SECONDS - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._closed:
                self._shutdown()
                return True
            self._admit()
        if self._joining is not None:
            self._guard(self._prefill_chunk, list(self._joining.rows), prefill=True)
        self._compact()
        if self._rows:
            self._guard(self._decode, list(self._rows), prefill=False)
            self._compact()
        return False

    def _guard(self, step: Callable[[], None], rows: list[Request], *, prefill: bool) -> None:
        try:
            step()
        except Exception as exc:  # noqa: BLE001 - a failed pass ends its requests, the others keep going
            log.exception("generation failed")
            reset = getattr(self.runner, "reset", None)
            if reset is not None:  # a pass that failed half-way may have left adapters half-switched
                reset()
            error = ModelError(f"generation failed: {type(exc).__name__}: {_short(exc)}")
            for r in rows:
                r.finish(error)
            if prefill:
                self._joining = None
            else:
                self._rows, self._cache, self._mask = [], None, None

    def _shutdown(self) -> None:
        joining = self._joining.rows if self._joining is not None else []
        for r in self._pending + self._rows + joining:
            r.finish(ModelError("the model server is shutting down"))
        self._pending.clear()
        self._rows, self._cache, self._mask, self._joining = [], None, None, None

    def _admit(self) -> None:
        """Under the lock: start a joining group from the queue's head, tell the rest their place."""
        for r in [r for r in self._pending if r.cancelled()]:
            self._pending.remove(r)
            r.finish()
        if self._joining is None and self._pending:
            # The batch's cache is left-padded to its longest row, so what it can grow to is rows x
            # the longest prompt + max_new_tokens, not the sum of the requests' own lengths.
            count = len(self._rows)
            width = max((r.reserved for r in self._rows), default=0)
            group: list[Request] = []
            for r in self._pending:
                fits = (count < self.max_batch_size
                        and (count + 1) * max(width, r.reserved) <= self.max_batch_tokens)
                if not fits and (count or group):  # alone, an oversize request still runs
                    break
                group.append(r)
                count, width = count + 1, max(width, r.reserved)
            if group:
                self._joining = self._start(group)  # then out of the queue: a failed start leaves them in it
                del self._pending[: len(group)]
        for i, r in enumerate(self._pending, 1):
            if r.position != i:
                r.position = i
                r.out.put(("queued", i))

    def _start(self, group: list[Request]) -> _Joining:
        import torch

        for r in group:
            if r.position:
                r.position = 0
                r.out.put(("queued", 0))
        width = max(len(r.prompt_ids) for r in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for i, r in enumerate(group):
            n = len(r.prompt_ids)
            ids[i, width - n:] = torch.tensor(r.prompt_ids, dtype=torch.long)
            mask[i, width - n:] = 1
        return _Joining(group, ids, mask, self.runner.new_cache())

    def _prefill_chunk(self) -> None:
        j = self._joining
        # prefill_chunk counts tokens: a group of n prompts advances prefill_chunk / n columns. With
        # nobody decoding there is nobody to keep waiting: the whole prompt goes in one pass.
        width = max(1, self.prefill_chunk // len(j.rows)) if self._rows else j.ids.shape[1]
        end = min(j.done + width, j.ids.shape[1])
        logits = self.runner.forward(j.ids[:, j.done:end], j.mask[:, :end], j.cache, [r.adapter for r in j.rows])
        j.done = end
        if end < j.ids.shape[1]:
            return
        self._joining = None
        self._sample(j.rows, logits)
        keep = [i for i, r in enumerate(j.rows) if not r.done and not r.cancelled()]
        for r in j.rows:
            if r.cancelled():
                r.finish()
        if keep:
            self._join([j.rows[i] for i in keep], j.cache, j.mask[keep], keep)

    def _join(self, rows: list[Request], cache: Any, mask: Any, keep: list[int]) -> None:
        import torch

        if len(keep) < cache_rows(cache, len(keep)):
            select_rows(cache, keep)
        if not self._rows:
            self._rows, self._cache, self._mask = rows, cache, mask
            return
        append_rows(self._cache, cache)
        width = max(self._mask.shape[1], mask.shape[1])
        self._mask = torch.cat([_pad_mask(self._mask, width), _pad_mask(mask, width)])
        self._rows = self._rows + rows

    def _decode(self) -> None:
        import torch

        rows = self._rows
        ids = torch.tensor([[r.generated[-1]] for r in rows], dtype=torch.long)
        mask = torch.cat([self._mask, torch.ones(len(rows), 1, dtype=torch.long)], dim=1)
        logits = self.runner.forward(ids, mask, self._cache, [r.adapter for r in rows])
        self._mask = mask
        self._sample(rows, logits)

    def _sample(self, rows: list[Request], logits: Any) -> None:
        live = [i for i, r in enumerate(rows) if not r.cancelled()]
        tokens = sample_rows(logits[live], [(rows[i].sampler, rows[i].seen()) for i in live])
        for i, token in zip(live, tokens):
            rows[i].take(token)
        self.tokens += len(live)

    def _compact(self) -> None:
        """Drop ended or cancelled requests from the batch, and padding no row needs any more."""
        for r in self._rows:
            if r.cancelled():
                r.finish()
        keep = [i for i, r in enumerate(self._rows) if not r.done]
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._rows, self._cache, self._mask = [], None, None  # the KV cache is freed here
            return
        select_rows(self._cache, keep)
        self._rows = [self._rows[i] for i in keep]
        self._mask = self._mask[keep]
        used = self._mask.any(dim=0).nonzero()
        first = int(used[0]) if used.numel() else 0
        if first:
            drop_left(self._cache, first)
            self._mask = self._mask[:, first:]


def cache_rows(cache: Any, default: int) -> int:
    """The batch size a cache holds (``default`` while it is empty)."""
    for layer in getattr(cache, "layers", []):
        keys = getattr(layer, "keys", None)
        if keys is not None and keys.numel():
            return int(keys.shape[0])
    return default


def _pad_mask(mask: Any, width: int) -> Any:
    import torch

    missing = width - mask.shape[1]
    if missing <= 0:
        return mask
    return torch.cat([torch.zeros(mask.shape[0], missing, dtype=mask.dtype), mask], dim=1)


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def consume(req: Request, on_exit: Callable[[], None] | None = None) -> Iterator[str]:
    """Yield ``req``'s deltas as the scheduler produces them (and :class:`Queued` items while it
    waits for a place in the batch); stop when it ends or is cancelled.

    Leaving the loop early (``break``, ``close()``, garbage collection) marks the request closed, so
    the scheduler drops it at its next step and frees its cache rows.
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
            elif kind == "queued":
                yield Queued(value)
            elif kind == "end":
                return
            else:
                raise value
    finally:
        req.closed.set()
        if on_exit is not None:
            on_exit()


__all__ = ["Request", "Scheduler", "consume"]
