"""Serving: one base model in memory with many LoRA adapters, streaming; remote OpenAI-compatible backends.

The app needs only these names (all cheap to import; weights load in ``prepare``)::

    from vichat.serve import build_backend, ModelError
    backend = build_backend()            # VICHAT_MODELS_CONFIG, else the machine's default
    backend.prepare(progress)            # optional, at start-up: build/load with progress
    for delta in backend.stream("tiny-chat", "Xin chào", history=[...], cancel=event): ...

docs/serving.md describes the configuration file, adapter switching, history folding and stops.
"""

from .api import ChatBackend, ModelError, ModelInfo, Turn
from .backends import CompositeBackend, build_backend
from .config import ConfigError, ServeConfig, default_config, load_config, parse_config, read_config
from .engine import LocalEngine
from .remote import RemoteBackend

__all__ = [
    "ChatBackend", "CompositeBackend", "ConfigError", "LocalEngine", "ModelError", "ModelInfo", "RemoteBackend",
    "ServeConfig", "Turn", "build_backend", "default_config", "load_config", "parse_config", "read_config",
]
