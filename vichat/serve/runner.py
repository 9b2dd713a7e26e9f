"""One base model with several LoRA adapters loaded into one PeftModel, stepped one request at a time.

The base weights exist once; each adapter adds only its low-rank matrices. Switching is peft's own
``set_adapter`` (and ``disable_adapter_layers`` for the bare base), done only when the next step
needs a different adapter than the last one, under a lock that also covers the forward pass.
"""

from __future__ import annotations

import inspect
import threading
from pathlib import Path
from typing import Any, Sequence

_UNSET = object()


def load_adapters(model: Any, adapters: Sequence[tuple[str, str]]) -> Any:
    """Wrap ``model`` in one PeftModel holding every ``(key, path_or_hub_id)`` adapter (inference only)."""
    if not adapters:
        return model
    from peft import PeftModel

    (first_key, first_path), rest = adapters[0], adapters[1:]
    peft_model = PeftModel.from_pretrained(model, first_path, adapter_name=first_key, is_trainable=False)
    for key, path in rest:
        peft_model.load_adapter(path, adapter_name=key, is_trainable=False)
    peft_model.eval()
    return peft_model


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


def is_local_path(value: str) -> bool:
    """A path on this machine (as opposed to a hub id)."""
    return Path(value).expanduser().exists()
