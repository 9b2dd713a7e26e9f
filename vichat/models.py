"""The one model loader: what a reference means (:func:`resolve`), and loading it (:func:`load`).

A reference is any of the things a user types where a model is wanted (train's base, eval's
``--model``, export's adapter, a models YAML entry, the local judge's model):

- a registered base model's name (``bloomz-7b1-mt``; ``vichat plugins`` lists them) or hub id;
- a LoRA adapter folder (``adapter_config.json``): its base is what the adapter records (the base
  model vichat trained it on, else ``base_model_name_or_path``), the LoRA is put on it;
- a model folder (``config.json``): loaded as it is with transformers;
- an alias the caller knows (a training preset's output folder, for instance).

Wherever the base model's weights live in a local folder, the one way to say so is ``base_path``
(``--base-path`` on every command, ``base_path:`` in a models YAML): a hub id and a folder go
through the same ``from_pretrained`` call. Heavy imports (torch, transformers, peft, bitsandbytes)
happen inside the functions, never at import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from .records import VichatError
from .specs import BaseModelSpec

ADAPTER_CONFIG = "adapter_config.json"
RUN_INFO = "vichat_train.json"  # written by `vichat train` beside the adapter: the base model's name, load_in...

LOAD_IN = ("8bit", "4bit", "none")


def apply_tokenizer_fixes(tokenizer: Any, spec: BaseModelSpec | None) -> Any:
    """Pad token and padding side from the spec (idempotent; returns ``tokenizer``).

    ``spec.pad_token == "eos"``: the model has no pad token (GPT-J), so EOS pads; labels must then
    be masked by position (see :class:`vichat.data.tokenize.DataCollatorForSFT`). Any other non-empty
    ``pad_token`` names the token to pad with. A tokenizer left without a pad token pads with EOS.
    ``padding_side`` comes from the spec."""
    if spec is not None and spec.pad_token == "eos" and tokenizer.eos_token is None:
        raise VichatError(f"base model {spec.name!r}: pad_token='eos' but its tokenizer has no EOS token")
    if spec is not None and spec.pad_token and spec.pad_token != "eos":
        tokenizer.pad_token = spec.pad_token
    elif (spec is not None and spec.pad_token == "eos") or (tokenizer.pad_token is None and tokenizer.eos_token is not None):
        tokenizer.pad_token = tokenizer.eos_token
    if spec is not None:
        tokenizer.padding_side = spec.padding_side
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


def _model_kwargs(load_in: str, dtype: Any, device_map: Any) -> dict[str, Any]:
    """``from_pretrained`` keywords: bitsandbytes quantisation, dtype and device map when given."""
    kwargs: dict[str, Any] = {}
    qconfig = quantization_config(load_in)
    if qconfig is not None:
        kwargs["quantization_config"] = qconfig
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    return kwargs


def load_base(spec: BaseModelSpec, path_or_id: str | None = None, **options: Any) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a registered base model from ``path_or_id`` (default its hub id):
    through the plugin's own ``load`` when it has one, else :func:`load_causal_lm`."""
    if spec.load is not None:
        return spec.load(spec, path_or_id, **options)
    return load_causal_lm(spec, path_or_id, **options)


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
    local = Path(source).expanduser().exists()
    if not local and _is_local_path(source):
        raise VichatError(f"{source}: no such folder, so base model {spec.name!r} cannot be loaded from it (it was "
                          "moved or deleted?); pass the folder that holds its weights (--base-path DIR)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **_model_kwargs(load_in, dtype, device_map))
    except (OSError, ValueError) as exc:
        if local:
            raise VichatError(f"{source}: cannot load model {spec.name!r} from this directory: {exc}") from exc
        raise VichatError(
            f"cannot load base model {spec.name!r} from the hub ({source}): {exc}. Without network, download it "
            f"elsewhere (e.g. `hf download {source}`) and pass the local folder (--base-path, or `base_path:` in "
            "a models YAML)."
        ) from exc
    apply_tokenizer_fixes(tokenizer, spec)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _is_local_path(ref: str) -> bool:
    """True for a reference that can only be a local path (absolute, ``~``, ``./``, ``../``), never a hub id."""
    text = str(ref)
    return text.startswith(("/", "~", "./", "../", "\\")) or Path(text).is_absolute()


# --------------------------------------------------------------------------- references


@dataclass(frozen=True)
class Resolved:
    """What a reference names, before anything is loaded."""

    ref: str
    model_id: str  # what answers, votes and reports call it
    spec: BaseModelSpec | None  # the registered base model, when known
    base: str  # where the base weights are: a local folder or a hub id
    adapter: Path | None = None  # the LoRA adapter folder, if any
    adapter_config: Mapping[str, Any] = field(default_factory=dict)
    run_info: Mapping[str, Any] = field(default_factory=dict)  # vichat's record of the training run

    @property
    def base_name(self) -> str:
        """The base model's registered name, else where its weights are."""
        return self.spec.name if self.spec is not None else self.base


def read_adapter(folder: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(adapter_config, run_info)`` of an adapter folder; run_info is ``{}`` for a non-vichat adapter."""
    folder = Path(folder).expanduser()
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        raise VichatError(f"{folder}: not a PEFT adapter folder (no {ADAPTER_CONFIG}); pass the output dir of "
                          "`vichat train` or one of its checkpoint folders")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        info_path = folder / RUN_INFO
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    except (OSError, json.JSONDecodeError) as exc:
        raise VichatError(f"{folder}: unreadable adapter files ({exc})") from exc
    return config, info


def find_base_model(ref: str, base_models: Sequence[BaseModelSpec]) -> BaseModelSpec | None:
    """The base model registered under the name or hub id ``ref``, or None."""
    for spec in base_models:
        if ref in (spec.name, spec.hub_id):
            return spec
    return None


def resolve(
    ref: str | Path,
    base_models: Sequence[BaseModelSpec],
    *,
    base_path: str | Path | None = None,
    aliases: Mapping[str, str | Path] | None = None,
) -> Resolved:
    """What ``ref`` names (see the module docstring); nothing is loaded.

    :param base_models: the registered base models (the caller's registry; names become specs at
        the edge).
    :param base_path: a local folder holding the base model's weights (instead of its hub id, or of
        the path an adapter recorded).
    :param aliases: other names the caller accepts (a training preset -> its output folder).
    """
    text = str(ref)
    path = Path(text).expanduser()
    if not path.exists() and aliases and text in aliases:
        path = Path(aliases[text]).expanduser()
        if not (path / ADAPTER_CONFIG).exists():
            raise VichatError(f"{text!r} has no trained adapter at {path}; train it (`vichat train {text}`) "
                              "or pass the adapter folder")
    base_path = str(Path(base_path).expanduser()) if base_path else None
    if path.is_dir() and (path / ADAPTER_CONFIG).exists():
        config, info = read_adapter(path)
        recorded = str(config.get("base_model_name_or_path") or "")
        spec = None
        if info.get("base_model"):
            spec = find_base_model(str(info["base_model"]), base_models)
        if spec is None and recorded:
            spec = find_base_model(recorded, base_models)
        base = base_path or recorded or (spec.hub_id if spec else "")
        if not base:
            raise VichatError(f"{path / ADAPTER_CONFIG} names no base model; pass --base-path DIR with its weights")
        return Resolved(text, path.name, spec, str(base), path, config, info)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise VichatError(f"{path}: neither a model folder (config.json) nor an adapter folder ({ADAPTER_CONFIG})")
        return Resolved(text, path.name, None, str(path))
    spec = find_base_model(text, base_models)
    if spec is None:
        names = ", ".join(s.name for s in base_models)
        extra = f", or one of {', '.join(sorted(aliases))}" if aliases else ""
        raise VichatError(
            f"{text!r} is not an adapter or model folder, nor a registered base model ({names}){extra}. "
            "`vichat plugins` lists base models; a model on the hub that no plugin registers needs a local "
            "folder (--base-path)"
        )
    return Resolved(text, spec.name, spec, base_path or spec.hub_id)


def load(resolved: Resolved, *, load_in: str = "none", dtype: Any = None, device_map: Any = None,
         adapter: bool = True, trainable: bool = False) -> tuple[Any, Any]:
    """``(model, tokenizer)`` for ``resolved``: the base model (through its spec's loader when it is
    registered, so a plugin's own ``load`` is honoured) with the adapter on it (``adapter=False``:
    the base alone)."""
    if resolved.spec is not None:
        options: dict[str, Any] = {"load_in": load_in}
        if dtype is not None:
            options["dtype"] = dtype
        if device_map is not None:
            options["device_map"] = device_map
        model, tokenizer = load_base(resolved.spec, resolved.base, **options)
    else:
        model, tokenizer = _load_plain(resolved.base, load_in=load_in, dtype=dtype, device_map=device_map)
    if adapter and resolved.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(resolved.adapter), is_trainable=trainable)
    return model, tokenizer


def _load_plain(source: str, *, load_in: str, dtype: Any, device_map: Any) -> tuple[Any, Any]:
    """A model no plugin registered: transformers' Auto classes, the generic tokenizer fixes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(source).expanduser().exists() and _is_local_path(source):
        raise VichatError(f"{source}: no such folder (moved or deleted?); pass the folder that holds the base "
                          "model's weights (--base-path DIR)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, **_model_kwargs(load_in, dtype, device_map))
    except (OSError, ValueError) as exc:
        where = "from this folder" if Path(source).exists() else "from the hub (pass --base-path DIR offline)"
        raise VichatError(f"{source}: cannot load a causal language model {where}: {exc}") from exc
    apply_tokenizer_fixes(tokenizer, None)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
