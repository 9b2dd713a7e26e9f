"""Loading a base model and its tokenizer from a hub id or a local directory: the same code.

Heavy imports (torch, transformers, bitsandbytes) happen inside the functions, never at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .records import VichatError
from .specs import BaseModelSpec

LOAD_IN = ("8bit", "4bit", "none")


def apply_tokenizer_fixes(tokenizer: Any, spec: BaseModelSpec | None) -> Any:
    """Pad token and padding side from the spec (GPT-J has no pad token: EOS stands in)."""
    if spec is not None:
        if spec.pad_token == "eos" or (tokenizer.pad_token is None and tokenizer.eos_token is not None):
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = spec.padding_side
    elif tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(load_in: str, compute_dtype: Any = None) -> Any:
    """A bitsandbytes config for ``load_in`` ("8bit", "4bit" = NF4, "none" -> None)."""
    if load_in not in LOAD_IN:
        raise VichatError(f"--load-in {load_in!r} is not one of {', '.join(LOAD_IN)}")
    if load_in == "none":
        return None
    from transformers import BitsAndBytesConfig

    if load_in == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    import torch

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype or torch.float16,
    )


def load_causal_lm(
    spec: BaseModelSpec,
    path_or_id: str | None = None,
    *,
    load_in: str = "none",
    dtype: Any = None,
    device_map: Any = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for ``spec`` from ``path_or_id`` (default: ``spec.hub_id``).

    A local directory and a hub id go through the same ``from_pretrained`` call; offline, a hub
    id that is not cached fails with a message naming the model and what to pass instead.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = path_or_id or spec.hub_id
    local = Path(source).exists()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        kwargs: dict[str, Any] = {}
        qconfig = quantization_config(load_in)
        if qconfig is not None:
            kwargs["quantization_config"] = qconfig
        if dtype is not None:
            kwargs["dtype"] = dtype
        if device_map is not None:
            kwargs["device_map"] = device_map
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as exc:
        if local:
            raise VichatError(f"{source}: cannot load model {spec.name!r} from this directory: {exc}") from exc
        raise VichatError(
            f"cannot load base model {spec.name!r} from the hub ({source}): {exc}. Without network, download it "
            "elsewhere (e.g. `huggingface-cli download {source}`) and pass the local directory instead."
        ) from exc
    apply_tokenizer_fixes(tokenizer, spec)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
