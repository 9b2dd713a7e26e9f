"""Serving: one base model in memory with many LoRA adapters, batched and streaming; vLLM and remote backends.

The app needs only these names (all cheap to import; weights load in ``prepare``)::

    from vichat.plugins import get_registry
    from vichat.serve import build_backend, ModelError
    backend = build_backend(registry=get_registry())  # VICHAT_MODELS_CONFIG, else the machine's default
    backend.prepare(progress)            # optional, at start-up: build/load with progress
    for delta in backend.stream("tiny-chat", "Xin chào", history=[...], cancel=event): ...
        # isinstance(delta, Queued): an empty delta saying the request's place in the queue

docs/serving.md describes the configuration file, batched decoding, vLLM, history folding and stops.
"""

from .api import ChatBackend, ModelError, ModelInfo, Queued, Turn
from .backends import CompositeBackend, build_backend
from .config import ConfigError, ServeConfig, default_config, load_config, parse_config, read_config
from .engine import LocalEngine
from .remote import RemoteBackend

__all__ = [
    "ChatBackend", "CompositeBackend", "ConfigError", "LocalEngine", "ModelError", "ModelInfo", "Queued", "RemoteBackend",
    "ServeConfig", "Turn", "build_backend", "default_config", "load_config", "parse_config", "read_config",
]
