"""Resolving ``vichat eval generate --model REF`` to ``(model, tokenizer)``.

``REF`` may be:

- an adapter directory (it has ``adapter_config.json``): its base model is loaded (the
  registered base model whose hub id or name is ``base_model_name_or_path``, or that path itself,
  or ``--base-path``) and the LoRA adapter put on it with ``peft.PeftModel``;
- a model directory (``config.json``): loaded as is with transformers;
- a registered base model name (``vichat plugins``): the original model, as the paper's "org" rows;
- a training preset (``bloomz-chat``...): its adapter under ``runs/<preset>``, where
  ``vichat train`` writes it by default.

torch, transformers and peft are imported inside the functions only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..records import VichatError


@dataclass
class LoadedModel:
    """A model ready to generate, and what to record about it in the answers' metadata."""

    model: Any
    tokenizer: Any
    model_id: str
    base_model: str
    adapter: str | None
    default_template: str | None
    decoding: Any


def _base_spec(ref: str):  # noqa: ANN202 - a BaseModelSpec or None
    from ..plugins import UnknownNameError, get_registry

    registry = get_registry()
    try:
        return registry.base_model(ref)
    except UnknownNameError:
        pass
    for spec in registry.all("base_models"):
        if spec.hub_id == ref:
            return spec
    return None


def _load_plain(path: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..models import apply_tokenizer_fixes

    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise VichatError(f"{path}: cannot load a causal language model from it: {exc}") from exc
    apply_tokenizer_fixes(tokenizer, None)
    return model, tokenizer


def _load_base(ref: str, base_path: str | None, load_in: str) -> tuple[Any, Any, Any]:
    spec = _base_spec(ref)
    if spec is not None:
        model, tokenizer = spec.load_model(base_path, load_in=load_in)
        return model, tokenizer, spec
    source = base_path or ref
    if not Path(source).exists():
        raise VichatError(
            f"base model {ref!r} is neither a registered base model nor a local directory; pass --base-path DIR "
            "with its weights (see `vichat plugins` for registered names)"
        )
    model, tokenizer = _load_plain(source)
    return model, tokenizer, None


def load_for_generation(ref: str, *, base_path: str | None = None, load_in: str = "none",
                        runs_dir: str = "runs") -> LoadedModel:
    """Load ``ref`` (see the module docstring) for answer generation."""
    from ..specs import Decoding

    path = Path(ref)
    if not path.exists():
        from ..train.presets import PRESETS

        if ref in PRESETS:
            candidate = Path(runs_dir) / ref
            if not (candidate / "adapter_config.json").exists():
                raise VichatError(
                    f"preset {ref!r} has no trained adapter at {candidate}; train it (`vichat train {ref}`) "
                    "or pass the adapter directory"
                )
            path = candidate
    if path.is_dir() and (path / "adapter_config.json").exists():
        try:
            cfg = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise VichatError(f"{path / 'adapter_config.json'}: unreadable ({exc})") from exc
        base = str(cfg.get("base_model_name_or_path") or "")
        if not base and not base_path:
            raise VichatError(f"{path / 'adapter_config.json'} names no base model; pass --base-path DIR")
        model, tokenizer, spec = _load_base(base or str(base_path), base_path, load_in)
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(path))
        return LoadedModel(model, tokenizer, model_id=path.name, base_model=spec.name if spec else base,
                           adapter=str(path), default_template=None, decoding=spec.decoding if spec else Decoding())
    if path.is_dir():
        model, tokenizer = _load_plain(str(path))
        return LoadedModel(model, tokenizer, model_id=path.name, base_model=str(path), adapter=None,
                           default_template=None, decoding=Decoding())
    spec = _base_spec(ref)
    if spec is None:
        raise VichatError(
            f"--model {ref!r} is not an adapter or model directory, a registered base model or a training preset"
        )
    model, tokenizer = spec.load_model(base_path, load_in=load_in)
    return LoadedModel(model, tokenizer, model_id=spec.name, base_model=spec.name, adapter=None,
                       default_template=spec.default_template, decoding=spec.decoding)
