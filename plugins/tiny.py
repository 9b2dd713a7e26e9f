"""The tiny offline base model: BLOOM architecture, trained from scratch by `vichat tiny build`.

It needs no download: ``load`` builds it on first use (a few minutes on two CPU cores, with
progress printed) and finds it in the cache after that; ``adapters`` does the same for the
``tiny-chat`` and ``tiny-doctor`` adapters the offline demo serves. Importing this plugin imports neither torch
nor transformers (only :mod:`vichat.tiny.build`, which is standard-library only at import time).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from vichat.plugin import Architecture, BaseModelSpec, Decoding, hookimpl
from vichat.tiny.build import DEFAULT_CONFIG as _CFG


def resolve_base_dir(path_or_id: str | Path) -> Path:
    """A tiny build folder (with ``base/`` inside) or the ``base/`` folder itself, as the model folder."""
    path = Path(path_or_id).expanduser()
    if not (path / "config.json").exists() and (path / "base" / "config.json").exists():
        return path / "base"
    return path


def load(spec: BaseModelSpec, path_or_id: str | None = None, **options: Any) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from the folder ``path_or_id`` if given, else from the cached default
    build, building it first (printing the plan and progress) when it is not there yet.

    The model's own names (``tiny``, the hub id ``vichat/tiny``, which is on no hub) mean the default
    build too: adapters trained before vichat recorded the build folder name the hub id."""
    from vichat.plugin import load_causal_lm

    if (path_or_id is not None and str(path_or_id) in (spec.name, spec.hub_id)
            and not (resolve_base_dir(path_or_id) / "config.json").is_file()):
        # (A folder of that name without a model in it, such as vichat's own source folder
        # `vichat/tiny` in a checkout, is not a model either.)
        path_or_id = None
    if path_or_id is None:
        from vichat.tiny.build import build_tiny, tiny_paths

        paths = tiny_paths()
        if not paths.is_complete(()):
            print(f"vichat: the tiny model is not built yet; building it now into {paths.root} "
                  "(once, a few minutes; `vichat tiny build` does the same)", file=sys.stderr, flush=True)
        # The base only: adapters are built by `vichat tiny build` (and by the demo), not on model load.
        path_or_id = str(build_tiny(adapters=False).base)
    return load_causal_lm(spec, str(resolve_base_dir(path_or_id)), **options)


def adapters(spec: BaseModelSpec, registry: Any, progress: Any = None) -> dict[str, str]:
    """``{"tiny-chat": folder, "tiny-doctor": folder}`` of the cached default build, building what is
    missing first (``progress(stage, fraction, message)`` follows it; the log gets its messages)."""
    import logging

    from vichat.tiny.build import build_tiny

    build = build_tiny(progress=progress, echo=logging.getLogger("vichat.tiny").info, show_progress=False,
                       registry=registry)
    return {name: str(folder) for name, folder in build.adapters.items()}


TINY = BaseModelSpec(
    name="tiny",
    description="Tiny BLOOM-architecture Vietnamese model trained from scratch offline (`vichat tiny build`).",
    # Not on the hub: the model is built locally; this names it in reports. Adapters record the build's
    # base folder instead (what transformers can load), and `load` reads this id as the default build.
    hub_id="vichat/tiny",
    architecture=Architecture(
        family="bloom",
        n_layers=_CFG.n_layer,
        hidden_size=_CFG.hidden_size,
        n_heads=_CFG.n_head,
        vocab_size=_CFG.vocab_size,
        max_positions=2048,  # ALiBi positions: no learned table limits the length
    ),
    # Same fused, per-head interleaved projection as BLOOMZ: LoRA targets it whole.
    lora_targets=("query_key_value",),
    load=load,
    adapters=adapters,
    default_template="chat",
    # The paper's defaults but a repetition penalty of 1.8: a 4-million-parameter model's next-token
    # distributions are so flat that under 1.2 greedy answers loop (a word, a comma or a letter
    # repeated to the token limit) and most adapter answers never reach EOS; 1.8 was chosen on the
    # adapters' validation questions (docs/tiny.md). 256 new tokens: the bundled doctor answers run
    # to ~300 tokens of this tokenizer, so 128 would cut most of them before their EOS.
    decoding=Decoding(repetition_penalty=1.8),
    license="apache-2.0",  # part of vichat; a Hugging Face license id (model cards' front matter)
)


@hookimpl
def register_base_models(register):
    register(TINY)
