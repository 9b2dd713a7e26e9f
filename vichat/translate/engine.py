"""The translation engine: protect, split, look up the cache, batch, send concurrently, restore.

One :class:`Engine` translates a list of texts ("segments"). Each segment is protected (code,
numbers... become markers), split into parts that fit one request, and each part is looked up in
the cache by its key. Parts that miss are deduplicated (a text that appears twice is paid once)
and packed into batches within the translator's limits. Worker threads send batches with retries;
the main thread alone validates answers, commits each finished batch to the cache and hands
finished segments to the caller, in completion order. Unless the whole plan was asked for first
(a dry run), the main thread prepares segments a slice at a time while the first batches are in
flight (:func:`vichat.jobs.run_pool` takes the batches from a generator).
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

from ..records import VichatError, nfc
from ..jobs import CANCELLED, FAILED, FATAL, HALT, ItemFailed, Outcome, run_pool
from ..retry import Backoff, Cancelled, RetryableError, call_with_retries
from ..specs import TRANSPORT_OPTIONS, TranslatorSpec
from .cache import TranslationCache, cache_keyer
from .errors import FatalTranslatorError, ProtectionError
from .protect import Protected, canonical_markers, check_markers, protect
from .split import join_parts, split_text

#: How many queued texts a run prepares (protects, keys, looks up) at a time between its other
#: work: the first slices are small so the first requests leave at once, later ones grow so that
#: a long job makes few cache queries.
FIRST_SLICE, MAX_SLICE = 32, 1024


@dataclass(slots=True)
class Segment:
    """One text to translate and, once ``done``, its ``result`` or ``error``."""

    index: int
    source_text: str
    lead: str = ""
    trail: str = ""
    protected: Protected | None = None
    parts: list[str] = field(default_factory=list)
    seps: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    results: list[str | None] = field(default_factory=list)
    pending: int = 0
    from_network: bool = False
    skipped: bool = False
    done: bool = False
    result: str | None = None
    error: str | None = None


@dataclass
class Plan:
    """What a run would send: the dry-run numbers (cache hits and duplicates excluded)."""

    translator: str
    records: int = 0
    segments: int = 0
    skipped: int = 0
    cached: int = 0
    to_send: int = 0
    chunks: int = 0
    characters: int = 0
    requests: int = 0
    cost_per_million_chars: float = 0.0
    batch_size: int = 0
    batch_chars: int = 0
    missing_env: list[str] = field(default_factory=list)

    @property
    def cost(self) -> float:
        """Estimated cost in US dollars of the characters still to send."""
        return self.characters / 1_000_000 * self.cost_per_million_chars


@dataclass
class RunStats:
    """What a run did."""

    requests: int = 0  # every attempt, retries and failed ones included
    characters_sent: int = 0  # the characters of every attempt (what a per-character API bills)
    batches_failed: int = 0
    elapsed: float = 0.0


@dataclass
class _Batch:
    keys: list[str]
    texts: list[str]


#: Words ``--option NAME=VALUE`` accepts for an option whose default is a bool.
_TRUE, _FALSE = frozenset({"1", "true", "yes", "on"}), frozenset({"0", "false", "no", "off"})


def _convert(spec: TranslatorSpec, name: str, value: Any, default: Any) -> Any:
    """``value`` as the type of the declared ``default``: ``--option`` gives strings, and the
    spec's default says what the option is (``0.0``: a number, ``120``: a whole number, ``False``: a
    flag). A string or ``None`` default takes the value as given; a value of another type (the
    Python API) is kept."""
    if not isinstance(value, str) or default is None or isinstance(default, str):
        return value
    text = value.strip()
    what = None
    if isinstance(default, bool):
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        what = "true or false"
    elif isinstance(default, int):
        try:
            return int(text)
        except ValueError:
            what = "a whole number"
    elif isinstance(default, float):
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return number
        what = "a number"
    else:
        return value
    raise VichatError(f"translator {spec.name!r}: bad option {name}={value!r}: expected {what} "
                      f"(default {default!r})")


def _check_transport(spec: TranslatorSpec, options: Mapping[str, Any]) -> None:
    """What every translator means by the transport options (:data:`TRANSPORT_OPTIONS`)."""
    timeout = options.get("timeout")
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and not timeout > 0:
        raise VichatError(f"translator {spec.name!r}: bad option timeout={timeout!r}: "
                          "expected a number of seconds above 0")
    retries = options.get("max_retries")
    if isinstance(retries, int) and not isinstance(retries, bool) and retries < 0:
        raise VichatError(f"translator {spec.name!r}: bad option max_retries={retries!r}: expected 0 or more")


def call_options(spec: TranslatorSpec, options: Mapping[str, Any]) -> dict[str, Any]:
    """What ``spec.translate`` is called with: every option the spec declares, ``options`` over its
    defaults (see :class:`vichat.specs.TranslatorSpec`). Checked here, once, before anything is
    sent (a bad value would otherwise fail every batch): an undeclared option is refused; a value
    given as a string is converted to the type of the option's declared default (``temperature=hot``
    for a ``0.0`` default is refused); ``timeout`` must be positive; and the spec's
    ``check_options`` gets the result (a copy) and raises ``ValueError`` (or :class:`VichatError`) for a value it cannot use. All of these
    become a :class:`VichatError`: one line, exit code 2 on the command line."""
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        takes = ", ".join(f"{k} (default {v!r})" for k, v in spec.options.items()) or "none"
        raise VichatError(f"translator {spec.name!r} takes no option {', '.join(map(repr, unknown))}; "
                          f"its options: {takes}")
    merged = {**spec.options, **{k: _convert(spec, k, v, spec.options[k]) for k, v in options.items()}}
    _check_transport(spec, merged)
    check = spec.check_options
    if check is not None:
        try:
            check(dict(merged))
        except (VichatError, ValueError, TypeError) as exc:
            raise VichatError(f"translator {spec.name!r}: bad option: {exc}") from None
    return merged


def output_options(spec: TranslatorSpec, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options that select the output (for the cache key): all the translator is called with,
    its declared defaults included (so a plugin's default model is part of the key), but transport."""
    return {k: v for k, v in call_options(spec, options).items() if k not in TRANSPORT_OPTIONS}


class Engine:
    """Translate segments through one translator with one cache; see the module docstring."""

    def __init__(
        self,
        spec: TranslatorSpec,
        source: str,
        target: str,
        cache: TranslationCache,
        *,
        options: Mapping[str, Any] | None = None,
        concurrency: int = 8,
        backoff: Backoff | None = None,
        batch_size: int | None = None,
        batch_chars: int | None = None,
        code_lines: bool = True,
        progress: bool | None = None,
        grace: float = 10.0,
    ) -> None:
        if concurrency < 1:
            raise VichatError("--concurrency must be at least 1")
        self.spec, self.source, self.target, self.cache = spec, source, target, cache
        self.options = call_options(spec, options or {})
        self.key_options = output_options(spec, self.options)
        self._key = cache_keyer(spec.name, self.key_options, source, target)
        self.concurrency = concurrency
        self.backoff = backoff or Backoff()
        self.batch_size = min(spec.max_batch_size, batch_size or spec.max_batch_size)
        self.batch_chars = min(spec.max_batch_chars, batch_chars or spec.max_batch_chars)
        if self.batch_size < 1 or self.batch_chars < 1:
            raise VichatError("--batch-size and --batch-chars must be positive")
        self.code_lines = code_lines
        self.progress = progress
        self.grace = grace
        self.segments: list[Segment] = []
        self._refs: dict[str, list[tuple[Segment, int]]] = {}  # keys not resolved yet -> their parts
        self._resolved: dict[str, tuple[str | None, str | None]] = {}  # key -> (text, error), this run
        self._prepared = 0  # segments[:_prepared] are protected and keyed
        self._batches: list[_Batch] | None = None
        self.stats = RunStats()
        self._gate_lock = threading.Lock()
        self._not_before = 0.0  # monotonic time before which no worker sends (Retry-After)

    # ---------------------------------------------------------------------------- planning
    def add(self, text: str) -> Segment:
        """Queue one text; returns its segment. The text is protected, split and keyed when
        :meth:`plan` or :meth:`run` reaches it (a run prepares texts while earlier requests are
        in flight); after either, the segment is ``done`` if nothing needed sending."""
        seg = Segment(index=len(self.segments), source_text=text)
        self.segments.append(seg)
        return seg

    def _prepare(self, seg: Segment) -> list[str]:
        """Protect, split and key ``seg``; returns the keys seen for the first time in this run
        (to look up and send). A part whose key is already resolved gets its text here."""
        text = seg.source_text
        core = text.strip()
        # Translators drop surrounding whitespace; keep it aside and put it back exactly.
        seg.lead = text[: len(text) - len(text.lstrip())]
        seg.trail = text[len(text.rstrip()) :] if core else ""
        raw = protect(core, code_lines=self.code_lines)
        seg.protected = Protected(nfc(raw.text), raw.spans)
        if not core or not seg.protected.translatable:
            seg.skipped = seg.done = True  # empty, or only code/numbers/links: nothing to pay for
            seg.result = seg.lead + seg.protected.restore(seg.protected.text) + seg.trail
            return []
        seg.parts, seg.seps = split_text(seg.protected.text, self.batch_chars)
        seg.keys = [self._key(p) for p in seg.parts]
        seg.results = [None] * len(seg.parts)
        seg.pending = len(seg.parts)
        new: list[str] = []
        for i, key in enumerate(seg.keys):
            known = self._resolved.get(key)
            if known is not None:  # an earlier batch of this run answered it already
                seg.results[i], error = known
                seg.from_network = True
                if error and not seg.error:
                    seg.error = error
                seg.pending -= 1
                continue
            refs = self._refs.get(key)
            if refs is None:
                self._refs[key] = refs = []
                new.append(key)
            refs.append((seg, i))
        return new

    def _prepare_all(self) -> list[str]:
        new: list[str] = []
        while self._prepared < len(self.segments):
            new += self._prepare(self.segments[self._prepared])
            self._prepared += 1
        return new

    def plan(self) -> Plan:
        """Look up the cache and pack what is missing into batches (done once)."""
        if self._batches is None:
            self._prepare_all()
            hits = self.cache.get_many(self._refs)
            for key, text in hits.items():
                for seg, i in self._refs.pop(key):
                    seg.results[i] = text
                    seg.pending -= 1
            self._batches = self._pack()
        plan = Plan(
            translator=self.spec.name,
            segments=len(self.segments),
            cost_per_million_chars=self.spec.cost_per_million_chars,
            batch_size=self.batch_size,
            batch_chars=self.batch_chars,
        )
        for seg in self.segments:
            if seg.skipped:
                plan.skipped += 1
            elif seg.done or seg.pending == 0:
                plan.cached += 1
            else:
                plan.to_send += 1
        plan.chunks = sum(len(b.keys) for b in self._batches)
        plan.characters = sum(len(t) for b in self._batches for t in b.texts)
        plan.requests = len(self._batches)
        plan.missing_env = [v for v in self.spec.env_vars if not os.environ.get(v)]
        return plan

    def batch_texts(self) -> list[list[str]]:
        """The texts of each planned request, in sending order (the dry run's batches)."""
        self.plan()
        assert self._batches is not None
        return [list(b.texts) for b in self._batches]

    def require_env(self) -> None:
        """Raise :class:`VichatError` naming the variables the translator needs, if anything is
        left to send (a run served entirely from the cache needs no key)."""
        if all(os.environ.get(v) for v in self.spec.env_vars):
            return  # nothing to check: no need to plan the whole run first
        plan = self.plan()
        if plan.requests and plan.missing_env:
            raise VichatError(
                f"translator {self.spec.name!r} needs the environment variable "
                f"{', '.join(plan.missing_env)}; set it (or run with --dry-run to see the cost first)"
            )

    def _pack(self) -> list[_Batch]:
        batches: list[_Batch] = []
        current = _Batch([], [])
        size = 0
        for key, refs in self._refs.items():  # first-appearance order: early records finish first
            seg, i = refs[0]
            text = seg.parts[i]
            if current.keys and (len(current.keys) >= self.batch_size or size + len(text) > self.batch_chars):
                batches.append(current)
                current, size = _Batch([], []), 0
            current.keys.append(key)
            current.texts.append(text)
            size += len(text)
        if current.keys:
            batches.append(current)
        return batches

    # ---------------------------------------------------------------------------- running
    def run(self, on_done: Callable[[Segment], None] = lambda seg: None) -> RunStats:
        """Translate everything queued; call ``on_done`` for every segment as it finishes.

        Unless :meth:`plan` ran first, texts are prepared as the run goes: the first batch is
        sent as soon as it is packed, and the rest are protected, looked up and packed while
        earlier requests are in flight (the same batches as the plan's, in the same order).

        Raises :class:`FatalTranslatorError` (after committing what finished) when the translator
        says no request can succeed, and ``KeyboardInterrupt`` after a clean stop on Ctrl-C.
        """
        from tqdm.auto import tqdm

        start = time.monotonic()
        self.require_env()
        bar = tqdm(total=len(self.segments), unit="text", desc=f"translate ({self.spec.name})",
                   disable=(not self.progress) if self.progress is not None else None, dynamic_ncols=True)

        def finished(seg: Segment) -> None:
            bar.update(1)
            on_done(seg)

        try:
            if self._batches is not None:  # planned already (a dry run's numbers were asked for)
                for seg in self.segments:
                    if seg.done:
                        finished(seg)
                    elif seg.pending == 0:
                        self._finish(seg, finished)
                if self._batches:
                    self._dispatch(self._batches, finished, bar)
            else:
                self._dispatch(self._stream(finished), finished, bar)
        finally:
            bar.close()
            self.stats.elapsed = time.monotonic() - start
        return self.stats

    def _stream(self, on_done: Callable[[Segment], None]) -> Iterator[_Batch]:
        """Prepare, look up and pack the queued segments a slice at a time; yield full batches."""
        current, size = _Batch([], []), 0
        # Nothing to look up in a cache that held nothing when the run began (what this run
        # sends is known from _resolved), as the plan would have found at the same moment.
        look_up = not self.cache.is_empty()
        step = FIRST_SLICE
        while self._prepared < len(self.segments):
            chunk = self.segments[self._prepared : self._prepared + step]
            step = min(2 * step, MAX_SLICE)
            new: list[str] = []
            for seg in chunk:
                new += self._prepare(seg)
                self._prepared += 1
            hits = self.cache.get_many(new) if new and look_up else {}
            for key, text in hits.items():
                for seg, i in self._refs.pop(key):
                    seg.results[i] = text
                    seg.pending -= 1
            for seg in chunk:  # finished without a request: nothing to send, or all cached
                if seg.done:
                    on_done(seg)
                elif seg.pending == 0:
                    self._finish(seg, on_done)
            for key in new:
                if key in hits:
                    continue
                seg, i = self._refs[key][0]
                text = seg.parts[i]
                if current.keys and (len(current.keys) >= self.batch_size or size + len(text) > self.batch_chars):
                    yield current
                    current, size = _Batch([], []), 0
                current.keys.append(key)
                current.texts.append(text)
                size += len(text)
        if current.keys:
            yield current

    def _dispatch(self, batches: Iterable[_Batch], on_done: Callable[[Segment], None], bar: Any) -> None:
        stop = threading.Event()
        lock = threading.Lock()

        def count_request(characters: int) -> None:
            with lock:
                self.stats.requests += 1
                self.stats.characters_sent += characters

        run_pool(batches, lambda batch: self._send(batch, stop, count_request),
                 lambda outcome: self._absorb(outcome, on_done, bar), concurrency=self.concurrency,
                 stop=stop, attempts=self.backoff.max_retries + 1, grace=self.grace, name="vichat-translate")

    def _wait_gate(self, stop: threading.Event) -> None:
        # A server that asked one worker to wait (Retry-After) means all of them: hammering it
        # from the other workers would only earn more 429s.
        while True:
            with self._gate_lock:
                wait = self._not_before - time.monotonic()
            if wait <= 0:
                return
            if stop.wait(wait):
                raise Cancelled()

    def _send(self, batch: _Batch, stop: threading.Event, count_request: Callable[[int], None]) -> list[str]:
        characters = sum(len(t) for t in batch.texts)

        def attempt() -> list[str]:
            self._wait_gate(stop)
            # Every attempt is a request sent (and billed), whatever comes back: count it here,
            # after any Retry-After wait, right before the translator is called.
            count_request(characters)
            try:
                return self.spec.translate(list(batch.texts), self.source, self.target, **self.options)
            except RetryableError as exc:
                if exc.retry_after:
                    delay = min(exc.retry_after, self.backoff.max_retry_after)
                    with self._gate_lock:
                        self._not_before = max(self._not_before, time.monotonic() + delay)
                raise

        try:
            out = call_with_retries(attempt, self.backoff, stop)
        except VichatError as exc:  # missing key, rejected key, exhausted quota: stop the job
            raise exc if isinstance(exc, FatalTranslatorError) else FatalTranslatorError(str(exc)) from exc
        if not isinstance(out, (list, tuple)) or len(out) != len(batch.texts):
            n = len(out) if isinstance(out, (list, tuple)) else type(out).__name__
            raise ItemFailed(f"translator returned {n} texts for {len(batch.texts)}")
        return list(out)

    def _absorb(self, outcome: Outcome, on_done: Callable[[Segment], None], bar: Any) -> BaseException | None:
        kind, batch, payload = outcome.kind, outcome.item, outcome.payload
        if kind == FATAL:
            return payload
        if kind in (CANCELLED, HALT):
            return None
        if kind == FAILED:
            self.stats.batches_failed += 1
            for key in batch.keys:
                self._resolve(key, None, payload, on_done)
            bar.set_postfix(failed_batches=self.stats.batches_failed, refresh=False)
            return None
        good: list[tuple[str, str]] = []
        bad: list[tuple[str, str]] = []
        for key, sent, got in zip(batch.keys, batch.texts, payload):
            if not isinstance(got, str):
                bad.append((key, f"translator returned {type(got).__name__}, not text"))
                continue
            got = canonical_markers(nfc(got))
            problem = check_markers(sent, got)
            if problem is None and not got.strip():
                problem = "translator returned an empty text"
            if problem:  # never cached: a rerun asks again
                bad.append((key, problem))
            else:
                good.append((key, got))
        self.cache.put_many(good, self.spec.name, self.source, self.target)  # before anyone relies on it
        for key, text in good:
            self._resolve(key, text, None, on_done)
        for key, problem in bad:
            self._resolve(key, None, problem, on_done)
        return None

    def _resolve(self, key: str, text: str | None, error: str | None, on_done: Callable[[Segment], None]) -> None:
        self._resolved[key] = (text, error)  # for a later text of this run with the same key
        for seg, i in self._refs.pop(key, ()):
            seg.results[i] = text
            seg.from_network = True
            if error and not seg.error:
                seg.error = error
            seg.pending -= 1
            if seg.pending == 0:
                self._finish(seg, on_done)

    def _finish(self, seg: Segment, on_done: Callable[[Segment], None]) -> None:
        if seg.error is None:
            assert seg.protected is not None
            try:
                joined = join_parts([r or "" for r in seg.results], seg.seps)
                seg.result = seg.lead + seg.protected.restore(joined) + seg.trail
            except ProtectionError as exc:
                seg.error = str(exc)
        seg.done = True
        on_done(seg)
