"""The serving engine's former scheduler, kept for bench/serve.py only: round-robin, one request per forward pass.

Each active request has its own KV cache; a round visits them one by one (grouped by adapter),
activating that request's LoRA adapter with peft's ``set_adapter`` (``disable_adapter_layers`` for the
bare base) before its single-sequence forward pass. Every stream progresses, but the aggregate
throughput is that of one sequence: the baseline the continuous-batching scheduler
(:mod:`vichat.serve.scheduler`) is measured against. Not product code.
"""

from __future__ import annotations

import inspect
import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

from vichat.serve.api import ModelError
from vichat.serve.sampling import Sampler
from vichat.serve.text import TokenTextStream

log = logging.getLogger("vichat.bench")

_UNSET = object()
POLL_SECONDS = 0.05


class AdapterRunner:
    """Runs forward steps of ``model`` (a PeftModel or a plain causal LM) under a chosen adapter."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.lock = threading.RLock()
        self.is_peft = hasattr(model, "peft_config") and hasattr(model, "set_adapter")
        self.adapters: tuple[str, ...] = tuple(model.peft_config) if self.is_peft else ()
        self._active: Any = _UNSET
        self.switches = 0  # adapter changes made, for tests and benchmarks
        base = model.get_base_model() if self.is_peft else model
        params = inspect.signature(base.forward).parameters
        # transformers 5.x renamed past_key_values to cache (the old name warns until 5.40).
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = "logits_to_keep" in params  # prefill then computes one row of logits, not one per token
        self.config = getattr(base, "config", None)
        # peft >= 0.17 can activate an adapter without marking its weights trainable.
        self._set_kwargs = ({"inference_mode": True} if self.is_peft and "inference_mode"
                            in inspect.signature(model.set_adapter).parameters else {})
        self.device = _input_device(base)

    def activate(self, adapter: str | None) -> None:
        """Make ``adapter`` (``None``: no adapter, the bare base) the one the next forward uses."""
        if adapter == self._active:
            return
        if not self.is_peft:
            if adapter is not None:
                raise ValueError(f"adapter {adapter!r} requested but the model has no adapters")
        elif adapter is None:
            self.model.base_model.disable_adapter_layers()
        else:
            if adapter not in self.adapters:
                raise ValueError(f"adapter {adapter!r} is not loaded (loaded: {', '.join(self.adapters)})")
            if self._active is None or self._active is _UNSET:
                self.model.base_model.enable_adapter_layers()
            self.model.set_adapter(adapter, **self._set_kwargs)
        self._active = adapter
        self.switches += 1

    def reset(self) -> None:
        """Forget which adapter is active (after a failed step): the next step sets it again."""
        with self.lock:
            self._active = _UNSET

    def new_cache(self) -> Any:
        """An empty KV cache for one request."""
        from transformers import DynamicCache

        if self.config is not None:
            try:
                return DynamicCache(config=self.config)
            except TypeError:  # transformers 4.x takes no config
                pass
        return DynamicCache()

    def step(self, adapter: str | None, ids: Sequence[int], cache: Any) -> Any:
        """Feed ``ids`` after what ``cache`` holds (it is updated in place); the last position's logits."""
        import torch

        with self.lock, torch.inference_mode():
            self.activate(adapter)
            kwargs: dict[str, Any] = {
                "input_ids": torch.tensor([list(ids)], dtype=torch.long, device=self.device),
                self._cache_kw: cache,
                "use_cache": True,
            }
            if self._keep_kw:
                kwargs["logits_to_keep"] = 1
            out = self.model(**kwargs)
            return out.logits[0, -1]


def _input_device(model: Any) -> Any:
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        try:
            return next(model.parameters()).device
        except (AttributeError, StopIteration):
            return "cpu"


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
        import torch

        if req.cache is None:
            req.cache = self.runner.new_cache()
            inputs = req.prompt_ids
        else:
            inputs = req.generated[-1:]
        logits = self.runner.step(req.adapter, inputs, req.cache)
        self.steps += 1
        token = req.sampler(logits, torch.tensor(req.prompt_ids + req.generated, dtype=torch.long))
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
