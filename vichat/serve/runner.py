"""One base model with several LoRA adapters in one PeftModel, run on batches of mixed adapters.

The base weights exist once; each adapter adds only its low-rank matrices. A forward pass takes a
batch whose rows use different adapters: peft's mixed-adapter inference (``adapter_names=`` one
name per row, ``"__base__"`` for the bare base) runs every LoRA layer's base projection on the whole
batch and adds each adapter's low-rank update to its own rows only (``LoraLayer._mixed_batch_forward``).
Requests on different adapters therefore share every forward pass. (A batch whose rows all use one
adapter, or none, runs without ``adapter_names`` after a one-off ``set_adapter`` /
``disable_adapter_layers``.)

The one thing the runner does instead of peft is how ``adapter_names`` reaches the layers. Given
``adapter_names=`` on a call, peft walks every module of the model twice (to check the names, then
to register a pre-forward hook on each LoRA layer) and removes the hooks afterwards: 1.1 ms of a
10.6 ms decoding step on the tiny model at 8 requests, and the walk grows with the model's module
count, not its width, so on a GPU, where a step of a big model takes milliseconds, it is paid on
every token. The runner registers the same pre-forward hooks (peft's ``LoraLayer`` and
``AuxiliaryTrainingWrapper`` modules, the ones peft hooks) once, and they pass the current pass's
names, kept by the runner, to peft's own ``_mixed_batch_forward``; the runner checks the names
itself (:meth:`BatchRunner.check`). Outside the runner's passes the hooks pass nothing, so calls
such as ``model.generate(adapter_names=...)`` behave as peft documents.

Rows are left-padded to a common length; ``attention_mask`` marks the real tokens. Positions come
from the mask: BLOOM builds its ALiBi bias from the mask's cumulative sum, models with position
embeddings (GPT-J's rotary) get ``position_ids = cumsum(mask) - 1``, so a padded row computes what it
would alone. The KV cache is transformers' ``DynamicCache`` (``[batch, heads, seq, head_dim]`` per
layer); the helpers below add rows (left-padding the shorter cache) and drop rows (``batch_select_indices``)
so requests can join and leave the batch between steps.

Its full-attention layers are :class:`GrowingLayer`: ``DynamicLayer`` appends each step's keys and
values with ``torch.cat``, copying the whole cache of every layer on every token, so a decoding
step's cost grows with the context for nothing. A ``GrowingLayer`` keeps ``GROW_BLOCK`` positions of
spare room and writes the new token in place; the cache is copied once per ``GROW_BLOCK`` tokens.
transformers' ``StaticCache`` avoids the copies too, but fixes the batch and the length when it is
made (rows could not join or leave) and does not run on BLOOM (its ALiBi bias follows the mask, not
the cache: a shape error in 5.24). Measured in bench/RESULTS.md, "Serving: the KV cache".
"""

from __future__ import annotations

import functools
import inspect
import threading
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
            self._mixing = _mixing_hooks(model)
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
        """An empty KV cache: a ``DynamicCache`` whose full-attention layers grow in place."""
        from transformers import DynamicCache

        cache = None
        if self.config is not None:
            try:
                cache = DynamicCache(config=self.config)
            except (TypeError, AttributeError):  # transformers 4.x takes no config; a stand-in model has none
                pass
        if cache is None:
            cache = DynamicCache()
        return growing(cache)

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
                    self._mixing.names = [BASE if a is None else a for a in adapters]
                else:
                    only = distinct.pop()
                    self._prepare(_BARE if only is None else only)
            try:
                out = self.model(**kwargs)
            finally:
                if self.is_peft:
                    self._mixing.names = None
            self.forwards += 1
            return out.logits[:, -1]


class _Mixing:
    """The adapter names of the pass in progress (``None``: not a mixed pass), read by the hooks."""

    names: list[str] | None = None

    def __call__(self, module: Any, args: Any, kwargs: dict[str, Any]) -> Any:
        if self.names is None:
            return None
        kwargs["adapter_names"] = self.names
        return args, kwargs


def _mixing_hooks(model: Any) -> _Mixing:
    """The pre-forward hooks that give ``model``'s LoRA layers a mixed pass's ``adapter_names``,
    registered once per model (runners built on the same model share them)."""
    mixing = getattr(model, "_vichat_mixing", None)
    if isinstance(mixing, _Mixing):
        return mixing
    from peft.tuners.lora import LoraLayer

    try:
        from peft.utils.other import AuxiliaryTrainingWrapper
        hooked: tuple[type, ...] = (LoraLayer, AuxiliaryTrainingWrapper)
    except ImportError:  # peft < 0.15: ModulesToSaveWrapper is the only wrapper taking adapter_names
        from peft.utils import ModulesToSaveWrapper
        hooked = (LoraLayer, ModulesToSaveWrapper)
    mixing = _Mixing()
    for module in model.modules():
        if isinstance(module, hooked):
            module.register_forward_pre_hook(mixing, with_kwargs=True)
    object.__setattr__(model, "_vichat_mixing", mixing)  # not a submodule: keep it out of nn.Module's registries
    return mixing


# --------------------------------------------------------------------------- the KV cache

GROW_BLOCK = 64  # spare positions a GrowingLayer keeps: one copy of the cache per 64 tokens, not per token


def _growing_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    # transformers 5.24 passes keys and values to lazy_initialization; some earlier releases only keys.
    init_takes_values = len(inspect.signature(DynamicLayer.lazy_initialization).parameters) >= 3

    class GrowingLayer(DynamicLayer):
        """A ``DynamicLayer`` that appends in place: ``keys``/``values`` are views of the first
        ``length`` positions of buffers with up to ``GROW_BLOCK`` more; a full buffer is copied into
        one ``GROW_BLOCK`` longer. Whatever sets ``keys``/``values`` from outside (row selection,
        cropping, offloading) is taken as the new buffers at the next update."""

        _kbuf: Any = None  # the buffers keys/values are views of
        _vbuf: Any = None
        _kview: Any = None  # the views last handed out: anything else in keys/values was set from outside
        _vview: Any = None
        _length = 0
        grown = 0  # buffers made (tests, benchmarks)

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            if not self.is_initialized:
                if init_takes_values:
                    self.lazy_initialization(key_states, value_states)
                else:  # pragma: no cover - older transformers
                    self.lazy_initialization(key_states)
            if self._kbuf is None or self.keys is not self._kview or self.values is not self._vview:
                self.adopt(self.keys, self.values)
            need = self._length + key_states.shape[-2]
            kbuf = self._kbuf
            if kbuf is None or need > kbuf.shape[-2] or kbuf.shape[:-2] != key_states.shape[:-2]:
                self._grow(key_states, value_states, need)
            self._kbuf[..., self._length:need, :] = key_states
            self._vbuf[..., self._length:need, :] = value_states
            self._length = need
            self.keys = self._kview = self._kbuf[..., :need, :]
            self.values = self._vview = self._vbuf[..., :need, :]
            return self.keys, self.values

        def _grow(self, key_states: Any, value_states: Any, need: int) -> None:
            capacity = need + GROW_BLOCK
            kbuf = key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1]))
            vbuf = value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1]))
            if self._length:
                kbuf[..., :self._length, :] = self._kbuf[..., :self._length, :]
                vbuf[..., :self._length, :] = self._vbuf[..., :self._length, :]
            self._kbuf, self._vbuf = kbuf, vbuf
            self.grown += 1

        def adopt(self, keys: Any, values: Any) -> None:
            """Take ``keys``/``values`` (``[batch, heads, seq, head_dim]``, or empty) as the cache,
            with no spare room; the old buffers are let go at once."""
            empty = keys is None or keys.dim() != 4 or keys.numel() == 0
            self._kbuf, self._vbuf = (None, None) if empty else (keys, values)
            self._length = 0 if empty else keys.shape[-2]
            self.keys, self.values = keys, values
            self._kview, self._vview = keys, values

    return GrowingLayer


@functools.cache
def growing_layer_class() -> type:
    """:class:`GrowingLayer` (made on first use: it subclasses transformers' ``DynamicLayer``)."""
    return _growing_layer_class()


def growing(cache: Any) -> Any:
    """``cache`` with every plain ``DynamicLayer`` (full attention) replaced by a ``GrowingLayer``;
    sliding-window and other layer types are kept."""
    from transformers.cache_utils import DynamicLayer

    cls = growing_layer_class()
    layers = getattr(cache, "layers", None)
    if layers:
        cache.layers = [cls() if type(layer) is DynamicLayer and not layer.is_initialized else layer
                        for layer in layers]
    if getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:  # layers made at first use
        cache.layer_class_to_replicate = cls
    return cache


# --------------------------------------------------------------------------- cache rows


def _layers(cache: Any) -> list[Any]:
    return [layer for layer in getattr(cache, "layers", []) if getattr(layer, "is_initialized", False)
            and getattr(layer, "keys", None) is not None and layer.keys.numel()]


def _store(layer: Any, keys: Any, values: Any) -> None:
    """Give ``layer`` new keys and values (a growing layer also lets go of its old buffers now)."""
    adopt = getattr(layer, "adopt", None)
    if adopt is not None:
        adopt(keys, values)
    else:
        layer.keys, layer.values = keys, values


def select_rows(cache: Any, rows: Sequence[int]) -> None:
    """Keep only ``rows`` of ``cache`` (in that order): a finished request's keys and values go."""
    import torch

    index = torch.tensor(list(rows), dtype=torch.long)
    for layer in _layers(cache):
        _store(layer, layer.keys[index.to(layer.keys.device)], layer.values[index.to(layer.values.device)])


def drop_left(cache: Any, n: int) -> None:
    """Drop the first ``n`` positions of every row (padding that no remaining row needs)."""
    if n > 0:
        for layer in _layers(cache):
            _store(layer, layer.keys[..., n:, :], layer.values[..., n:, :])


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
        _store(a, torch.cat([_pad_left(a.keys, length), _pad_left(b.keys, length)], dim=0),
               torch.cat([_pad_left(a.values, length), _pad_left(b.values, length)], dim=0))


def _input_device(model: Any) -> Any:
    try:
        return model.get_input_embeddings().weight.device
    except (AttributeError, NotImplementedError):
        try:
            return next(model.parameters()).device
        except (AttributeError, StopIteration):
            return "cpu"
