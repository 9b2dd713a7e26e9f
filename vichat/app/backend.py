"""Which backend the app serves, and loading its weights in the background.

The models come from the serving configuration (``VICHAT_MODELS_CONFIG``, else the machine's
default: see docs/serving.md) through :func:`vichat.serve.build_backend`; ``fake`` (or
``VICHAT_FAKE_BACKEND=1``) serves the canned backend instead, for UI work and tests. Loading
weights takes minutes, so :class:`Preparer` does it in a thread while the page is already up and
reports progress to the header; until then the first request would wait for the load.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

from ..serve.api import ChatBackend, ModelError, ModelInfo
from .safety import describe_error

log = logging.getLogger("vichat.app")


def fake_requested(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return env.get("VICHAT_FAKE_BACKEND", "").strip().lower() in ("1", "true", "yes", "on")


def load_backend(config: str | Path | None = None, *, fake: bool = False) -> ChatBackend:
    """The configured backend (nothing heavy is loaded yet), or the canned one when ``fake``."""
    if fake or fake_requested():
        from .fake import CannedBackend

        return CannedBackend()
    from ..plugins import get_registry
    from ..serve import build_backend

    return build_backend(config, registry=get_registry())


class NoModels:
    """A backend with no model, standing in when the configured one cannot be built: the page
    comes up and says why (``warnings``) instead of the Space crashing at start-up."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.warnings = [f"Không có mô hình nào: {reason}"]

    def models(self) -> list[ModelInfo]:
        return []

    def stream(self, model: str, message: str, history=(), **kwargs: Any):  # noqa: ANN001
        raise ModelError(self.reason)


class Preparer:
    """Runs ``backend.prepare(progress)`` once in a daemon thread; :meth:`status` says how far it got."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend
        self._message = ""
        self._fraction = 0.0
        self._error: str | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def needed(self) -> bool:
        return callable(getattr(self.backend, "prepare", None))

    def start(self) -> "Preparer":
        if not self.needed:
            self._done.set()
            return self
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="vichat-prepare", daemon=True)
                self._thread.start()
        return self

    def _progress(self, stage: str, fraction: float, message: str) -> None:
        self._fraction, self._message = float(fraction), message
        log.info("prepare: %s (%.0f%%)", message, 100 * fraction)

    def _run(self) -> None:
        try:
            self.backend.prepare(self._progress)
        except Exception as exc:  # noqa: BLE001 - the page says so; chatting shows the model's error
            self._error = describe_error(exc)
            log.error("loading the models failed: %s", self._error)
        finally:
            self._done.set()

    @property
    def ready(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def status(self) -> str:
        """One line for the page header (empty once everything loaded)."""
        notes = [str(w) for w in getattr(self.backend, "warnings", []) or []]
        if self._error:
            return f"⚠️ Không tải được mô hình: {self._error}"
        if not self._done.is_set():
            return f"⏳ Đang tải mô hình ({self._fraction:.0%}): {self._message or 'bắt đầu…'}"
        return ("ℹ️ " + " ".join(notes)) if notes else ""
