"""The remote backend: any OpenAI-compatible server (vLLM, TGI, ...) through the official client.

A Space without a GPU fronts a real server. With vLLM, each LoRA adapter is a model name
(``vllm serve bigscience/bloomz-7b1-mt --enable-lora --lora-modules bloomz-chat=/adapters/bloomz-chat
...``), and vLLM itself switches adapters per request.

``api: completions`` (default) sends the prompt vichat renders itself (template + folded history,
exactly as the local engine; the paper's models have no chat template); ``api: chat`` sends the turns
as chat messages and the template's preamble as the system message, for servers whose model has a
chat template. Decoding: ``temperature``, ``top_p``, ``max_tokens`` as standard fields;
``top_k`` and ``repetition_penalty`` in ``extra_body`` (vLLM reads them; servers that do not know them
ignore them). The template's stop markers are sent as ``stop`` *and* applied here, so a server that
ignores ``stop`` still never shows a marker.

A prompt too long for the server's context (HTTP 400 saying so) is retried without the oldest turn,
the same truncation the local engine does by counting tokens.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any, Iterator, Sequence

from ..records import drop_garbage
from ..specs import Decoding
from .api import ModelError, ModelInfo, Turn
from .config import ModelConfig, RemoteBackendConfig
from .engine import resolve_template_or_error, unknown_model
from .history import fold_history, stop_markers, template_parts
from .scheduler import POLL_SECONDS
from .text import StopFilter

log = logging.getLogger("vichat.serve")

_CONTEXT_HINTS = ("context length", "context_length", "maximum context", "too long", "max_model_len",
                  "input validation error")


def _short(exc: BaseException, limit: int = 200) -> str:
    msg = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    msg = " ".join(str(msg).split())
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"


class RemoteBackend:
    """A :class:`vichat.serve.api.ChatBackend` for one OpenAI-compatible server."""

    def __init__(self, config: RemoteBackendConfig, *, client: Any = None, registry: Any = None) -> None:
        self.registry = registry  # where template names are found (None: the paper's built-in ones)
        self.config = config
        self._models = {m.name: m for m in config.models}
        self._client = client
        self._client_lock = threading.Lock()
        self.warnings: list[str] = []

    @classmethod
    def create(cls, base_url: str, models: Sequence[ModelConfig | str], *, api_key_env: str | None = None,
               api: str = "completions", timeout: float = 120.0, max_retries: int = 1) -> "RemoteBackend":
        """Build one without a configuration file (model names as strings or :class:`ModelConfig`)."""
        ms = tuple(ModelConfig(name=m) if isinstance(m, str) else m for m in models)
        return cls(RemoteBackendConfig(base_url=base_url, models=ms, api_key_env=api_key_env, api=api,
                                       timeout=timeout, max_retries=max_retries))

    # -- ChatBackend ---------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        return [ModelInfo(name=m.name, description=m.description or f"{m.model or m.name} at {self.config.base_url}",
                          template=m.template or "chat", decoding=m.decoding_over(Decoding()), backend="remote")
                for m in self._models.values()]

    def prepare(self, progress: Any = None) -> None:
        """Nothing to load: the server holds the weights."""
        if progress is not None:
            progress("ready", 1.0, f"remote models at {self.config.base_url}: {', '.join(self._models)}")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def stream(self, model: str, message: str, history: Sequence[Turn] = (), *, template: str | None = None,
               decoding: Decoding | None = None, cancel: threading.Event | None = None) -> Iterator[str]:
        """See :meth:`vichat.serve.api.ChatBackend.stream`: the request is sent here (connection and
        HTTP errors raise :class:`ModelError` at the call); the iterator reads the SSE stream."""
        if model not in self._models:
            raise unknown_model(model, list(self._models))
        m = self._models[model]
        tpl = resolve_template_or_error(template or m.template or "chat", self.registry)
        dec = decoding or m.decoding_over(Decoding())
        stops = stop_markers(tpl, m.stop)
        history = list(history)
        while True:
            try:
                response = self._send(m, tpl, message, history, dec, stops)
                break
            except Exception as exc:  # noqa: BLE001 - every client error becomes a short ModelError
                text = _short(exc).lower()
                if history and getattr(exc, "status_code", None) == 400 and any(h in text for h in _CONTEXT_HINTS):
                    history = history[1:]  # too long for the server: drop the oldest turn and retry
                    continue
                raise ModelError(f"{model}: the server at {self.config.base_url} failed: {_short(exc)}") from exc
        return self._read(model, response, StopFilter(stops), cancel)

    # -- internals -----------------------------------------------------------------------------
    @property
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                from openai import OpenAI

                key = "EMPTY"  # vLLM and TGI accept any key unless started with one
                if self.config.api_key_env:
                    key = os.environ.get(self.config.api_key_env, "")
                    if not key:
                        raise ModelError(f"the environment variable {self.config.api_key_env} (api_key_env of "
                                         f"{self.config.label}) is not set: it must hold the server's API key")
                self._client = OpenAI(base_url=self.config.base_url, api_key=key, timeout=self.config.timeout,
                                      max_retries=self.config.max_retries)
            return self._client

    def _send(self, m: ModelConfig, tpl: Any, message: str, history: Sequence[Turn], dec: Decoding,
              stops: Sequence[str]) -> Any:
        extra: dict[str, Any] = {"repetition_penalty": dec.repetition_penalty}
        if dec.top_k > 0:
            extra["top_k"] = dec.top_k
        common: dict[str, Any] = {
            "model": m.model or m.name,
            "max_tokens": dec.max_new_tokens,
            "temperature": max(0.0, dec.temperature),  # 0: greedy on vLLM and TGI
            "top_p": dec.top_p,
            "stream": True,
            "extra_body": extra,
        }
        if stops:
            common["stop"] = list(stops)
        if self.config.api == "chat":
            messages: list[dict[str, str]] = []
            preamble = template_parts(tpl).preamble.strip()
            if preamble:
                messages.append({"role": "system", "content": preamble})
            for user, answer in history:
                messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
            messages.append({"role": "user", "content": message})
            return self.client.chat.completions.create(messages=messages, **common)
        return self.client.completions.create(prompt=fold_history(tpl, message, history), **common)

    def _read(self, model: str, response: Any, stop_filter: StopFilter,
              cancel: threading.Event | None) -> Iterator[str]:
        """Chunks are read by a helper thread into a queue: a read blocked on a slow server cannot
        delay a cancel, which the consumer checks every ``POLL_SECONDS``. The helper closes the
        connection as soon as its read returns after a cancel (or the consumer went away)."""
        chunks: "queue.SimpleQueue[tuple[str, Any]]" = queue.SimpleQueue()
        gone = threading.Event()

        def reader() -> None:
            finished = False  # a chunk carried a finish_reason: the server ended the answer itself
            try:
                for chunk in response:
                    if gone.is_set() or (cancel is not None and cancel.is_set()):
                        break
                    # A server streams U+FFFD for bytes that never form a character (vLLM does); the
                    # local engine holds such bytes back, so neither backend ever shows one.
                    chunks.put(("text", drop_garbage(_chunk_text(chunk))))
                    finished = finished or _finish_reason(chunk) is not None
                else:
                    # The openai client ends the iteration at `[DONE]` and at a closed connection
                    # alike: without a finish_reason the answer was cut off, and must not pass as whole.
                    chunks.put(("end", None) if finished else ("cut", None))
                    return
                chunks.put(("end", None))
            except Exception as exc:  # noqa: BLE001 - handed to the consumer
                chunks.put(("error", exc))
            finally:
                response.close()

        threading.Thread(target=reader, name="vichat-remote-read", daemon=True).start()
        try:
            while True:
                if cancel is not None and cancel.is_set():
                    return
                try:
                    kind, value = chunks.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    continue
                if kind == "error":
                    raise ModelError(f"{model}: the stream from {self.config.base_url} broke: {_short(value)}") from value
                if kind == "cut":
                    raise ModelError(f"{model}: the stream from {self.config.base_url} ended before the answer did "
                                     "(no chunk carried a finish_reason): the server stopped or the connection was "
                                     "cut; try again")
                if kind == "end":
                    tail = stop_filter.flush()
                    if tail:
                        yield tail
                    return
                out = stop_filter.push(value)
                if out:
                    yield out
                if stop_filter.stopped:
                    return
        finally:
            gone.set()


def _finish_reason(chunk: Any) -> str | None:
    """Why the server ended the answer (``stop``, ``length``...), on the chunk that ends it; else ``None``."""
    choices = getattr(chunk, "choices", None) or []
    return getattr(choices[0], "finish_reason", None) if choices else None


def _chunk_text(chunk: Any) -> str:
    """The text of one streamed chunk (completions: ``choices[0].text``; chat: ``delta.content``)."""
    choices = getattr(chunk, "choices", None) or []
    if not choices:
        return ""
    choice = choices[0]
    delta = getattr(choice, "delta", None)
    if delta is not None:
        return getattr(delta, "content", None) or ""
    return getattr(choice, "text", None) or ""
