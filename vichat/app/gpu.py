"""``@gpu``: Hugging Face ZeroGPU's ``@spaces.GPU`` where the ``spaces`` package is importable,
a no-op everywhere else (a laptop, CI, a dedicated-GPU Space without the package).

ZeroGPU runs a decorated function in a worker that holds the GPU, so decorate only pure
generation functions with picklable arguments, never handlers that change the app's state.
``VICHAT_ZEROGPU=0`` turns it off even where ``spaces`` is installed.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


def _spaces_gpu() -> Callable[..., Any] | None:
    if os.environ.get("VICHAT_ZEROGPU", "").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        spaces = importlib.import_module("spaces")
    except ImportError:
        return None
    return getattr(spaces, "GPU", None)


def gpu(fn: F | None = None, *, duration: int | None = None) -> Any:
    """Decorate ``fn`` with ``spaces.GPU`` (optionally ``duration`` seconds) when available.

    Works bare (``@gpu``) and with arguments (``@gpu(duration=120)``).
    """

    def decorate(f: F) -> F:
        spaces_gpu = _spaces_gpu()
        if spaces_gpu is None:
            return f
        wrapped = spaces_gpu(duration=duration)(f) if duration else spaces_gpu(f)
        try:
            wrapped.__vichat_zerogpu__ = True  # lets tests and logs tell the decorator was applied
        except (AttributeError, TypeError):
            pass
        return wrapped

    return decorate(fn) if fn is not None else decorate
