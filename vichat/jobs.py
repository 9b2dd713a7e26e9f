"""The one job runner: worker threads do the slow part (a request), the calling thread commits.

Translation (one item = a batch of texts) and judging (one item = a pair of answers) both run
here. The rules that make a long paid job safe to interrupt live in this module only:

- Workers take items from a queue and run ``work(item)``; they never touch the cache or the output.
  The calling thread fills the queue lazily, a bounded distance ahead of the workers, so a
  generator that prepares the next item runs while the requests already sent are in flight.
  Only the calling thread commits (``commit(outcome)``), in completion order, so SQLite sees one
  writer and a result is stored before anything relies on it.
- An exception from ``work`` is sorted, not propagated: :class:`Halt` (a cost cap: take no new
  item, let the ones in flight land), :class:`vichat.retry.Cancelled` (stopped while waiting),
  :class:`~vichat.records.VichatError` (nothing can succeed: a bad key, no quota; the whole job
  stops), :class:`~vichat.retry.RetryableError` (retries exhausted) and anything else (this item
  failed; the rest go on).
- Ctrl-C (or a fatal outcome) sets ``stop``; answers already in flight were probably paid for, so
  they get ``grace`` seconds to land and be committed; a second Ctrl-C stops waiting.
- Worker threads are daemons: Ctrl-C never waits for a slow request to time out.

The limits of a run (requests and tokens per minute, retries with backoff, a cost cap) are applied
by ``work`` itself through :mod:`vichat.retry` and the callers' limiters: this module is only the
concurrency and the interrupt handling.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .records import VichatError
from .retry import Cancelled, RetryableError

#: Outcome kinds, in the order a caller usually handles them.
OK, FAILED, FATAL, CANCELLED, HALT = "ok", "failed", "fatal", "cancelled", "halt"


class Halt(Exception):
    """Raised by ``work`` to stop taking new items while letting those in flight finish
    (the judge's cost cap). Its message is the outcome's payload."""


class ItemFailed(Exception):
    """Raised by ``work`` to fail one item with exactly this message (no exception type prefixed)."""


@dataclass
class Outcome:
    """What became of one item: ``kind`` is one of OK, FAILED, FATAL, CANCELLED, HALT; ``payload``
    is ``work``'s return value (OK), a message (FAILED, HALT) or the exception (FATAL)."""

    kind: str
    item: Any
    payload: Any = None


def classify(item: Any, exc: BaseException, attempts: int) -> Outcome:
    """The outcome of an item whose ``work`` raised ``exc`` (``attempts``: for the retry message)."""
    if isinstance(exc, Halt):
        return Outcome(HALT, item, str(exc))
    if isinstance(exc, Cancelled):
        return Outcome(CANCELLED, item, "interrupted")
    if isinstance(exc, VichatError):
        return Outcome(FATAL, item, exc)
    if isinstance(exc, RetryableError):
        return Outcome(FAILED, item, f"gave up after {attempts} attempts: {exc}")
    if isinstance(exc, ItemFailed):
        return Outcome(FAILED, item, str(exc))
    return Outcome(FAILED, item, f"{type(exc).__name__}: {exc}")


_END = object()  # tells a worker to exit


def run_pool(
    items: Iterable[Any],
    work: Callable[[Any], Any],
    commit: Callable[[Outcome], BaseException | None],
    *,
    concurrency: int,
    stop: threading.Event,
    attempts: int = 1,
    grace: float = 10.0,
    name: str = "vichat-job",
) -> None:
    """Run ``work`` over ``items`` on ``concurrency`` threads; ``commit`` every outcome here.

    ``items`` is consumed lazily, on this thread, at most ``concurrency`` items ahead of the
    workers: a generator that prepares the next item (the translator protects and looks up the
    next texts) runs while the requests already sent are in flight, so preparing costs no wall
    time next to them. Finished outcomes are committed before the next item is prepared.

    ``commit`` returns an exception to end the job with (after in-flight work had ``grace``
    seconds to land), or None. A FATAL outcome is handed to ``commit`` like any other; whatever
    ``commit`` returns for it is raised. An exception raised by ``items`` itself ends the job the
    same way. Raises ``KeyboardInterrupt`` after a clean stop on Ctrl-C.

    :param attempts: how many attempts one item gets (only for the "gave up after N" message).
    """
    source = iter(items)
    work_queue: queue.Queue = queue.Queue()
    done: queue.Queue = queue.Queue()
    halt = threading.Event()

    def worker() -> None:
        while True:
            item = work_queue.get()
            if item is _END or stop.is_set() or halt.is_set():
                break
            try:
                outcome = Outcome(OK, item, work(item))
            except BaseException as exc:  # noqa: BLE001 - sorted into outcomes, never lost
                outcome = classify(item, exc, attempts)
                if outcome.kind == HALT:
                    halt.set()
                elif outcome.kind == FATAL:
                    stop.set()
            done.put(outcome)
        done.put(None)  # this worker has exited

    started = running = 0
    closed = False  # no item will be queued any more

    def close() -> None:
        nonlocal closed
        if not closed:
            closed = True
            for _ in range(started):  # every worker gets one: blocked ones wake up and exit
                work_queue.put(_END)

    fatal: BaseException | None = None
    try:
        while True:
            try:  # commit first: a finished result is stored before more work is prepared
                outcome = done.get_nowait()
            except queue.Empty:
                outcome = None
                if not closed and (stop.is_set() or halt.is_set()):
                    close()
                if not closed and work_queue.qsize() < concurrency:
                    try:
                        item = next(source)
                    except StopIteration:
                        close()
                    else:
                        work_queue.put(item)
                        if started < concurrency:
                            threading.Thread(target=worker, daemon=True, name=name).start()
                            started += 1
                            running += 1
                    continue
                if closed and not running:
                    break
                try:
                    outcome = done.get(timeout=0.2)
                except queue.Empty:
                    continue
            if outcome is None:
                running -= 1
                continue
            fatal = commit(outcome) or fatal
            if fatal is not None:
                stop.set()
                close()
                _drain(done, running, commit, grace)
                break
    except BaseException:  # Ctrl-C, or the items failed: let what is in flight land, then stop
        stop.set()
        close()
        _drain(done, running, commit, grace)
        raise
    if fatal is not None:
        raise fatal


def _drain(done: queue.Queue, running: int, commit: Callable[[Outcome], Any], grace: float) -> None:
    # Answers already in flight were probably paid for: give them a moment to land and be committed.
    deadline = time.monotonic() + grace
    try:
        while running and time.monotonic() < deadline:
            try:
                outcome = done.get(timeout=0.1)
            except queue.Empty:
                continue
            if outcome is None:
                running -= 1
            elif outcome.kind == OK:
                commit(outcome)
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: stop waiting
