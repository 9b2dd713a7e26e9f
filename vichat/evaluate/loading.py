"""``vichat eval generate --model REF``: a model ready to answer, and what to record about it.

What ``REF`` may be, and how the base model's weights are found, is :func:`vichat.models.resolve`'s
business (an adapter folder, a model folder, a registered base model, or a training preset through
the ``aliases`` the CLI passes); this module only adds what the answers' metadata records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..specs import BaseModelSpec, Decoding


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


def load_for_generation(ref: str, base_models: Sequence[BaseModelSpec], *, base_path: str | None = None,
                        load_in: str = "none", aliases: Mapping[str, str | Path] | None = None) -> LoadedModel:
    """Resolve and load ``ref`` for answer generation."""
    from ..models import load, resolve

    resolved = resolve(ref, base_models, base_path=base_path, aliases=aliases)
    model, tokenizer = load(resolved, load_in=load_in)
    spec = resolved.spec
    plain_base = resolved.adapter is None and spec is not None  # the original model, the paper's "org" rows
    return LoadedModel(model, tokenizer, model_id=resolved.model_id, base_model=resolved.base_name,
                       adapter=str(resolved.adapter) if resolved.adapter else None,
                       default_template=spec.default_template if plain_base else None,
                       decoding=spec.decoding if spec is not None else Decoding())
