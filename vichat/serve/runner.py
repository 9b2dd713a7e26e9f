"""One base model with several LoRA adapters in one PeftModel, run on batches of mixed adapters.

The base weights exist once; each adapter adds only its low-rank matrices. A forward pass takes a
batch whose rows use different adapters: peft's mixed-adapter inference (``adapter_names=`` one
name per row, ``"__base__"`` for the bare base) runs every LoRA layer's base projection on the whole
batch and adds each adapter's low-rank update to its own rows only (``LoraLayer._mixed_batch_forward``).
Requests on different adapters therefore share every forward pass. (A batch whose rows all use one
adapter, or none, runs without ``adapter_names`` after a one-off ``set_adapter`` /
``disable_adapter_layers``: peft's per-call hook set-up costs as much as a tiny model's forward.)

Rows are left-padded to a common length; ``attention_mask`` marks the real tokens. Positions come
from the mask: BLOOM builds its ALiBi bias from the mask's cumulative sum, models with position
embeddings (GPT-J's rotary) get ``position_ids = cumsum(mask) - 1``, so a padded row computes what it
would alone. The KV cache is transformers' ``DynamicCache`` (``[batch, heads, seq, head_dim]`` per
layer); the helpers below add rows (left-padding the shorter cache) and drop rows (``batch_select_indices``)
so requests can join and leave the batch between steps.
"""

from __future__ import annotations

import inspect
import threading
from pathlib import Path
from typing import Any, Sequence

BASE = "__base__"  # peft's name for "no adapter" in adapter_names
_MIXED, _BARE = object(), object()  # runner states besides "this one adapter is active"


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


class BatchRunner:
    """Forward passes of ``model`` (a PeftModel or a plain causal LM) over left-padded batches."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.lock = threading.RLock()  # held during a forward pass; code using the model directly holds it too
        self.is_peft = hasattr(model, "peft_config") and hasattr(model, "base_model")
        self.adapters: tuple[str, ...] = tuple(model.peft_config) if self.is_peft else ()
        base = model.get_base_model() if self.is_peft else model
        params = inspect.signature(base.forward).parameters
        # transformers 5.x renamed past_key_values to cache (the old name warns until 5.40).
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = "logits_to_keep" in params  # prefill then computes one row of logits, not one per token
        self._pos_kw = "position_ids" in params  # BLOOM has none: ALiBi comes from the attention mask
        self.config = getattr(base, "config", None)
        self.device = _input_device(base)
        self.forwards = 0  # forward passes run, for tests and benchmarks
        # peft >= 0.17 can activate an adapter without marking its weights trainable.
        self._set_kwargs = ({"inference_mode": True} if self.is_peft and "inference_mode"
                            in inspect.signature(model.set_adapter).parameters else {})
        self._state: Any = None
        if self.is_peft:
            self._prepare(_MIXED)

    def _prepare(self, state: Any) -> None:
        """Put the PeftModel in ``state``: ``_MIXED`` (adapter layers on, rows pick theirs with
        ``adapter_names``), ``_BARE`` (adapter layers off) or one adapter's name (only it active).

        A batch whose rows all use one adapter (or none) runs without ``adapter_names``: peft's
        per-call hook set-up walks every module, which costs as much as a small model's forward."""
        if state is self._state or (isinstance(state, str) and state == self._state):
            return
        base = self.model.base_model
        if state is _BARE:
            base.disable_adapter_layers()
        else:
            if self._state is _BARE or self._state is None:
                base.enable_adapter_layers()  # adapter_names is ignored by layers whose adapters are off
            if state is not _MIXED:
                self.model.set_adapter(state, **self._set_kwargs)
        self._state = state

    def reset(self) -> None:
        """Adapter layers on, whatever adapter is active: the state peft's own ``adapter_names``
        calls (``generate(adapter_names=...)``) expect. Also after a failed pass, or after code
        outside the runner switched adapters."""
        with self.lock:
            if self.is_peft:
                self._state = None
                self._prepare(_MIXED)

    def new_cache(self) -> Any:
        """An empty KV cache."""
        from transformers import DynamicCache

        if self.config is not None:
            try:
                return DynamicCache(config=self.config)
            except (TypeError, AttributeError):  # transformers 4.x takes no config; a stand-in model has none
                pass
        return DynamicCache()

    def check(self, adapter: str | None) -> None:
        """Raise ``ValueError`` if ``adapter`` is not loaded (``None``, the bare base, always is)."""
        if adapter is not None and adapter not in self.adapters:
            loaded = ", ".join(self.adapters) or "none"
            raise ValueError(f"adapter {adapter!r} is not loaded (loaded: {loaded})")

    def forward(self, ids: Any, mask: Any, cache: Any, adapters: Sequence[str | None]) -> Any:
        """Feed ``ids`` (``[batch, n]``) after what ``cache`` holds (updated in place); ``mask`` covers
        the cache and ``ids`` (``[batch, cached + n]``, 0 on padding). Returns the last position's
        logits, ``[batch, vocab]``; row ``i`` runs under ``adapters[i]`` (``None``: the bare base)."""
        import torch

        for a in set(adapters):
            self.check(a)
        with self.lock, torch.inference_mode():
            kwargs: dict[str, Any] = {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device),
                                      self._cache_kw: cache, "use_cache": True}
            if self._pos_kw:
                kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1]:].to(self.device)
            if self._keep_kw:
                kwargs["logits_to_keep"] = 1
            if self.is_peft:
                distinct = set(adapters)
                if len(distinct) > 1:
                    self._prepare(_MIXED)
                    kwargs["adapter_names"] = [BASE if a is None else a for a in adapters]
                else:
                    only = distinct.pop()
                    self._prepare(_BARE if only is None else only)
            out = self.model(**kwargs)
            self.forwards += 1
            return out.logits[:, -1]


# --------------------------------------------------------------------------- cache rows


def _layers(cache: Any) -> list[Any]:
    return [layer for layer in getattr(cache, "layers", []) if getattr(layer, "is_initialized", False)
            and getattr(layer, "keys", None) is not None and layer.keys.numel()]


def select_rows(cache: Any, rows: Sequence[int]) -> None:
    """Keep only ``rows`` of ``cache`` (in that order): a finished request's keys and values go."""
    import torch

    index = torch.tensor(list(rows), dtype=torch.long)
    for layer in _layers(cache):
        layer.keys = layer.keys[index.to(layer.keys.device)]
        layer.values = layer.values[index.to(layer.values.device)]


def drop_left(cache: Any, n: int) -> None:
    """Drop the first ``n`` positions of every row (padding that no remaining row needs)."""
    if n > 0:
        for layer in _layers(cache):
            layer.keys = layer.keys[..., n:, :]
            layer.values = layer.values[..., n:, :]


def _pad_left(t: Any, length: int) -> Any:
    import torch

    missing = length - t.shape[-2]
    if missing <= 0:
        return t
    pad = torch.zeros(*t.shape[:-2], missing, t.shape[-1], dtype=t.dtype, device=t.device)
    return torch.cat([pad, t], dim=-2)


def append_rows(cache: Any, other: Any) -> None:
    """Append ``other``'s rows to ``cache`` (in place), left-padding the shorter one with zeros
    (the caller pads the attention masks the same way, so the zeros are never attended to)."""
    import torch

    mine, theirs = _layers(cache), _layers(other)
    if len(mine) != len(theirs):
        raise ValueError("cannot merge KV caches with different layers")
    for a, b in zip(mine, theirs):
        length = max(a.keys.shape[-2], b.keys.shape[-2])
        a.keys = torch.cat([_pad_left(a.keys, length), _pad_left(b.keys, length)], dim=0)
        a.values = torch.cat([_pad_left(a.values, length), _pad_left(b.values, length)], dim=0)


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
