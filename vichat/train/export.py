"""``export(adapter_dir, out_dir, merge=True)``: a merged full model (or a clean adapter copy) for serving.

Merging adds ``B @ A x alpha / r`` into the base weights (peft's ``merge_and_unload``), so the
result loads with plain ``AutoModelForCausalLM`` and runs as fast as the base. It is refused onto a
quantised base: the sum would be rounded back onto the int8/NF4 grid and most of the small LoRA
update lost (:func:`vichat.train.validate.check_merge`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Sequence

from ..records import VichatError
from .adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, RUN_INFO
from .validate import check_merge

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja")
DTYPE_NAMES = {"auto": "auto", "fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _is_quantized(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False)
                or getattr(model, "hf_quantizer", None) is not None
                or getattr(model.config, "quantization_config", None))


def _quantization_on_disk(ref: str) -> str | None:
    """``"8bit"``/``"4bit"`` when the base folder holds an already-quantised checkpoint."""
    config = Path(ref).expanduser() / "config.json"
    if not config.is_file():
        return None
    q = json.loads(config.read_text(encoding="utf-8")).get("quantization_config")
    if not q:
        return None
    return "8bit" if q.get("load_in_8bit") or q.get("bits") == 8 else "4bit"


def _merged_card(adapter_dir: Path, ref: str) -> str:
    card = adapter_dir / "README.md"
    body = card.read_text(encoding="utf-8") if card.is_file() else ""
    if body.startswith("---\n"):  # drop the adapter's front matter (library_name: peft no longer applies)
        end = body.find("\n---\n", 4)
        body = body[end + 5 :] if end >= 0 else body
    return (f"---\nbase_model: {ref}\nlanguage:\n- vi\npipeline_tag: text-generation\ntags:\n- vichat\n- merged-lora\n---\n\n"
            f"# Merged model\n\nThe LoRA adapter `{adapter_dir.name}` merged into `{ref}` with peft's `merge_and_unload` "
            "(`vichat export --merge`). Load it with `AutoModelForCausalLM.from_pretrained`; the adapter's card "
            f"follows.\n{body}")


def export(
    adapter_dir: str | Path,
    out_dir: str | Path,
    merge: bool = True,
    *,
    base_models: Sequence[Any],
    base_path: str | None = None,
    load_in: str = "none",
    dtype: str = "auto",
) -> Path:
    """Write ``out_dir`` for serving.

    :param merge: merge the adapter into the base (``merge_and_unload``) and save the full model
        and tokenizer; ``False`` copies the adapter, its card and tokenizer only.
    :param base_models: the registered base models (the base is found as :func:`vichat.models.resolve`
        finds it: the model vichat trained the adapter on, else ``base_model_name_or_path``).
    :param base_path: the base model's weights in a local folder (instead of where the adapter says).
    :param load_in: how to load the base; ``8bit``/``4bit`` are refused for a merge.
    :param dtype: dtype of the merged weights (``auto`` = as the base is stored).

    A failed export removes the ``out_dir`` it created (a folder that existed before is left as it was).
    """
    from ..models import resolve

    adapter_dir = Path(adapter_dir).expanduser()
    out = Path(out_dir).expanduser()
    if not (adapter_dir / ADAPTER_CONFIG).is_file():
        raise VichatError(f"{adapter_dir}: not a PEFT adapter folder (no {ADAPTER_CONFIG}); pass the output dir "
                          "of `vichat train` or one of its checkpoint folders")
    resolved = resolve(adapter_dir, base_models, base_path=base_path)
    if out.resolve() == adapter_dir.resolve():
        raise VichatError(f"--out {out} is the adapter folder itself; choose another folder")
    if dtype not in DTYPE_NAMES:
        raise VichatError(f"--dtype {dtype!r} is not one of {', '.join(DTYPE_NAMES)}")
    created = _first_missing(out)  # what a failure removes again: never a folder the user had
    try:
        return _write(adapter_dir, out, merge, resolved, load_in=load_in, dtype=dtype)
    except BaseException:
        if created is not None and created.exists():
            shutil.rmtree(created, ignore_errors=True)
        raise


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet, or None."""
    path = path.absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _write(adapter_dir: Path, out: Path, merge: bool, resolved: Any, *, load_in: str, dtype: str) -> Path:
    """The work of :func:`export` once the arguments are checked: the base is loaded (and the merge
    refused onto a quantised one) before anything is written, so a failure leaves no output behind."""
    from ..models import load

    ref = resolved.base
    if not merge:
        out.mkdir(parents=True, exist_ok=True)
        for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS, "README.md", RUN_INFO, "loss_curve.png", *TOKENIZER_FILES):
            if (adapter_dir / name).is_file():
                shutil.copy2(adapter_dir / name, out / name)
        return out

    check_merge(load_in, ref)
    on_disk = _quantization_on_disk(ref)
    if on_disk:
        check_merge(on_disk, f"{ref} (an already-quantised checkpoint)")
    import torch
    from peft import PeftModel

    torch_dtype: Any = DTYPE_NAMES[dtype] if dtype == "auto" else getattr(torch, DTYPE_NAMES[dtype])
    model, tokenizer = load(resolved, load_in=load_in, dtype=torch_dtype, adapter=False)
    if _is_quantized(model):
        check_merge("8bit" if getattr(model, "is_loaded_in_8bit", False) else "4bit", ref)
    model = PeftModel.from_pretrained(model, str(adapter_dir))
    merged = model.merge_and_unload()
    if any((adapter_dir / f).is_file() for f in TOKENIZER_FILES):
        # The tokenizer saved next to the adapter is the one training used (pad fixes included).
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    (out / "README.md").write_text(_merged_card(adapter_dir, ref), encoding="utf-8")
    return out
