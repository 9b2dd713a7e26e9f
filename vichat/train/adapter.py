"""Saving the LoRA adapter in plain PEFT format, and refusing to leave an empty one behind.

LoRA under DeepSpeed ZeRO-3 is known to save adapters whose tensors are empty (peft #2892): the
weights are partitioned and ``state_dict()`` sees placeholders. Every save is therefore read back
and checked: the expected tensors with the expected shapes and parameter count, and after at least
one optimizer step, ``lora_B`` weights that are not all zero (they start at zero, so an all-zero
``lora_B`` means the update never reached the file).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from ..records import VichatError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
RUN_INFO = "vichat_train.json"  # what vichat knows about the run (spec name, load_in...): for export
PEFT_2892 = "https://github.com/huggingface/peft/issues/2892"


class EmptyAdapterError(VichatError):
    """The saved adapter is missing weights or holds none of the training."""


def _adapter_key(name: str, adapter_name: str = "default") -> str:
    """An in-memory parameter name as peft writes it to disk (without the adapter name)."""
    return name.replace(f".{adapter_name}.", ".")


def expected_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """``{key in adapter_model.safetensors: shape}`` for the trainable parameters of ``model``.

    Under ZeRO-3 a parameter's full shape is ``ds_shape`` (its ``shape`` is a placeholder)."""
    shapes = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            shape = tuple(getattr(p, "ds_shape", None) or p.shape)
            shapes[_adapter_key(name)] = shape
    return shapes


def loaded_from(model: Any) -> str | None:
    """The local folder (absolute) ``model``'s weights were read from, or None (a hub id, or a model
    built in memory).

    transformers records what ``from_pretrained`` was given in ``name_or_path`` (its config's
    ``_name_or_path``); a peft model is looked through to its base. A plugin's loader may read the
    weights from a folder of its own (the ``tiny`` model's build cache) while the run only knows the
    hub id: this is where they really came from."""
    base = model
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):
        try:
            base = get_base()
        except Exception:  # pragma: no cover - a wrapper without a base: fall back to the model itself
            base = model
    config = getattr(base, "config", None)
    for name in (getattr(base, "name_or_path", None), getattr(config, "_name_or_path", None)):
        if isinstance(name, str) and name:
            path = Path(name).expanduser()
            if (path / "config.json").is_file():
                return str(path.resolve())
    return None


def base_reference(base_path: str | None, hub_id: str, model: Any = None) -> str:
    """What ``adapter_config.json`` records as the base: the local folder (absolute) or hub id used.

    With ``model`` (the loaded base, or the peft model on it), the folder its weights were read from
    wins: it is what ``AutoModelForCausalLM.from_pretrained`` can load again, also when a plugin
    found the weights itself (``tiny``: its build cache, or the ``base/`` inside a build folder given
    as ``--base-path``). Without a local folder, the hub id."""
    if model is not None:
        folder = loaded_from(model)
        if folder is not None:
            return folder
    ref = base_path or hub_id
    p = Path(ref).expanduser()
    return str(p.resolve()) if p.exists() else ref


def save_adapter(
    model: Any,
    folder: str | Path,
    *,
    base_model_name_or_path: str,
    expected: Mapping[str, tuple[int, ...]],
    steps_done: int,
    run_info: Mapping[str, Any] | None = None,
    state_dict: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Save ``model``'s adapter to ``folder`` with ``model.save_pretrained`` and verify it.

    ``state_dict`` (peft-named, e.g. gathered under ZeRO-3) is passed through to peft when given.
    ``base_model_name_or_path``: what to record (:func:`base_reference` with the model: the folder
    the base was really loaded from). Returns the verification summary; raises :class:`EmptyAdapterError` when the file is wrong."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for cfg in model.peft_config.values():
        # peft takes the name from the loaded model's config; record exactly what was loaded.
        cfg.base_model_name_or_path = base_model_name_or_path
    kwargs: dict[str, Any] = {"safe_serialization": True, "save_embedding_layers": False}
    if state_dict is not None:
        kwargs["state_dict"] = dict(state_dict)
    model.save_pretrained(str(folder), **kwargs)
    if run_info is not None:
        (folder / RUN_INFO).write_text(json.dumps(dict(run_info), ensure_ascii=False, indent=2), encoding="utf-8")
    return verify_adapter(folder, expected, steps_done)


def verify_adapter(folder: str | Path, expected: Mapping[str, tuple[int, ...]], steps_done: int) -> dict[str, Any]:
    """Check the saved adapter against the expected tensors; see the module docstring."""
    from safetensors import safe_open

    folder = Path(folder)
    weights = folder / ADAPTER_WEIGHTS
    if not (folder / ADAPTER_CONFIG).is_file() or not weights.is_file():
        raise EmptyAdapterError(f"{folder}: the adapter was not written ({ADAPTER_CONFIG} and {ADAPTER_WEIGHTS} expected)")
    with safe_open(str(weights), framework="pt") as fh:
        saved = {k: fh.get_tensor(k) for k in fh.keys()}
    want = dict(expected)
    missing = sorted(set(want) - set(saved))
    if missing:
        raise EmptyAdapterError(f"{weights}: {len(missing)} of {len(want)} LoRA tensors missing (first: {missing[0]}); "
                                f"saved keys: {', '.join(sorted(saved)[:3])}...")
    wrong = [(k, tuple(saved[k].shape), want[k]) for k in want if tuple(saved[k].shape) != tuple(want[k])]
    if wrong:
        k, got, exp = wrong[0]
        raise EmptyAdapterError(
            f"{weights}: {len(wrong)} LoRA tensors have the wrong shape (e.g. {k}: {got}, expected {exp}). "
            f"An empty shape is the ZeRO-3 empty-adapter bug (peft #2892, {PEFT_2892}): save with ZeRO-2, "
            "or gather the parameters before saving"
        )
    n_params = sum(saved[k].numel() for k in want)
    n_expected = sum(_numel(s) for s in want.values())
    if n_params != n_expected:
        raise EmptyAdapterError(f"{weights}: {n_params:,} LoRA parameters saved, {n_expected:,} expected")
    b_keys = [k for k in want if ".lora_B." in k]
    zero_b = [k for k in b_keys if not bool(saved[k].float().abs().sum() > 0)]
    if steps_done > 0 and b_keys and len(zero_b) == len(b_keys):
        raise EmptyAdapterError(
            f"{weights}: every lora_B weight is zero after {steps_done} optimizer steps, so the adapter holds none "
            f"of the training (the ZeRO-3 empty-adapter symptom, peft #2892, {PEFT_2892}; or a learning rate of 0)"
        )
    return {"tensors": len(want), "parameters": n_params, "bytes": weights.stat().st_size,
            "zero_lora_B": len(zero_b)}


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
