"""From a configuration to the one :class:`ChatBackend` the app talks to.

:func:`build_backend` makes a :class:`LocalEngine` per local backend (one base model in memory each),
a :class:`RemoteBackend` per server and a :class:`vichat.serve.vllm.VllmBackend` per vLLM process,
behind a :class:`CompositeBackend` that routes each request
by model name. Nothing heavy happens here: weights load in :meth:`CompositeBackend.prepare`.
"""

from __future__ import annotations

import os
import threading
from typing import Any, Iterator, Sequence

from ..specs import Decoding
from .api import ChatBackend, ModelError, ModelInfo, Turn
from .config import (ConfigError, LocalBackendConfig, ServeConfig, VllmBackendConfig, check_unique, load_config,
                     read_config)
from .engine import LocalEngine, Progress, unknown_model
from .remote import RemoteBackend


class CompositeBackend:
    """Several backends as one: ``models()`` is their union, ``stream`` goes to the model's owner."""

    def __init__(self, backends: Sequence[Any], *, source: str = "", notes: Sequence[str] = ()) -> None:
        self.backends = list(backends)
        self.source = source
        self.notes = list(notes)
        owners: dict[str, Any] = {}
        for backend in self.backends:
            for info in backend.models():
                if info.name in owners:
                    raise ConfigError(f"model name {info.name!r} is served by two backends: {_label(owners[info.name])} "
                                      f"and {_label(backend)}; names must be unique (votes store them)")
                owners[info.name] = backend
        self._owners = owners

    @property
    def warnings(self) -> list[str]:
        """Models hidden because their adapters are missing, and similar notes, for the app to show."""
        return [w for b in self.backends for w in getattr(b, "warnings", [])]

    def models(self) -> list[ModelInfo]:
        return [info for b in self.backends for info in b.models()]

    def backend_for(self, model: str) -> Any:
        backend = self._owners.get(model)
        if backend is None or model not in {m.name for m in backend.models()}:
            raise unknown_model(model, [m.name for m in self.models()])
        return backend

    def stream(self, model: str, message: str, history: Sequence[Turn] = (), *, template: str | None = None,
               decoding: Decoding | None = None, cancel: threading.Event | None = None) -> Iterator[str]:
        return self.backend_for(model).stream(model, message, history, template=template, decoding=decoding,
                                              cancel=cancel)

    def prepare(self, progress: Progress | None = None) -> None:
        """Load every local backend's weights (building the tiny model first when needed).

        Call it at start-up, in a thread if the page should show progress meanwhile; otherwise the
        first request of each backend loads it. A backend that fails raises :class:`ModelError`
        after the others were tried."""
        errors = []
        for backend in self.backends:
            try:
                backend.prepare(progress)
            except ModelError as exc:
                errors.append(str(exc))
        if errors:
            raise ModelError("; ".join(errors))

    def close(self) -> None:
        for backend in self.backends:
            backend.close()


def _label(backend: Any) -> str:
    config = getattr(backend, "config", None)
    return getattr(config, "label", None) or type(backend).__name__


def _check_names(b: Any, registry: Any) -> None:
    """Base models and templates must be registered: say so now, with the file and line, rather than
    at a visitor's first request."""
    from ..records import VichatError

    default_template = "chat"
    if isinstance(b, (LocalBackendConfig, VllmBackendConfig)):
        try:
            default_template = registry.base_model(b.base).default_template
        except VichatError as exc:
            raise ConfigError(f"{b.where}: base: {exc}") from None
    for m in b.models:
        try:
            registry.template(m.template or default_template)
        except VichatError as exc:
            raise ConfigError(f"{m.where}: model {m.name!r}: template: {exc}") from None


def build_backend(config: ServeConfig | str | os.PathLike | None = None, *, registry: Any) -> CompositeBackend:
    """The backend for ``config``: a :class:`ServeConfig`, a YAML file, or ``None`` for
    :func:`vichat.serve.config.load_config` (``VICHAT_MODELS_CONFIG``, else the machine's default).

    Raises :class:`ConfigError` for an invalid file, duplicate names, or when no model is left to
    serve (e.g. none of the paper's adapters has been trained yet). ``registry``: where base models
    and templates are found (the CLI and the app pass the plugin registry)."""
    if config is None:
        config = load_config()
    elif not isinstance(config, ServeConfig):
        config = read_config(config)
    check_unique(config)
    backends: list[Any] = []
    hidden: list[str] = []
    for b in config.backends:
        _check_names(b, registry)
        if isinstance(b, LocalBackendConfig):
            backend: Any = LocalEngine(b, registry=registry)
        elif isinstance(b, VllmBackendConfig):
            from .vllm import VllmBackend

            backend = VllmBackend(b, registry=registry)  # ConfigError when vLLM cannot serve its adapters
        else:
            backend = RemoteBackend(b, registry=registry)
        if backend.models():
            backends.append(backend)
        else:
            hidden += backend.warnings
    if not backends:
        raise ConfigError(f"{config.source}: no model to serve. " + " ".join(hidden)
                          + " Set VICHAT_MODELS_CONFIG to a configuration that lists models you have.")
    composite = CompositeBackend(backends, source=config.source, notes=config.notes)
    composite.notes += hidden
    return composite


__all__ = ["ChatBackend", "CompositeBackend", "build_backend"]
