"""The model side of training: the base with LoRA on it, the loss, the optimizer and the schedule.

torch, transformers and peft are imported inside the functions (importing this module is cheap).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

from ..records import VichatError
from .loss import token_loss_sum  # noqa: F401 - re-exported (the plain loss)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..specs import BaseModelSpec
    from .config import TrainConfig

DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def torch_dtype(name: str) -> "torch.dtype":
    """``"fp16"`` -> ``torch.float16`` (and so on)."""
    import torch

    return getattr(torch, DTYPES[name])


def load_base(cfg: "TrainConfig", spec: "BaseModelSpec", device: str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` through the registry spec, quantised per ``cfg.load_in``.

    The non-quantised parts of a quantised base load in the compute dtype and are then upcast to
    fp32 by :func:`peft.prepare_model_for_kbit_training` (as alpaca-lora does)."""
    from ..models import apply_tokenizer_fixes
    from ..models import load_base as load_registered

    options: dict[str, Any] = {"load_in": cfg.load_in, "dtype": torch_dtype(cfg.compute_dtype)}
    if device.startswith("cuda"):
        # bitsandbytes places quantised weights at load time: each process loads onto its own GPU.
        options["device_map"] = {"": device}
    model, tokenizer = load_registered(spec, cfg.base_path, **options)
    apply_tokenizer_fixes(tokenizer, spec)  # idempotent; a plugin's own loader may not apply them
    if tokenizer.eos_token_id is None:
        raise VichatError(f"base model {spec.name!r}: its tokenizer has no EOS token, which SFT needs to teach "
                          "the model when to stop")
    return model, tokenizer


def add_lora(model: Any, cfg: "TrainConfig", targets: Sequence[str]) -> Any:
    """Prepare ``model`` for training and wrap it in a peft LoRA model.

    Gradient checkpointing is non-reentrant: the reentrant variant needs an input that requires
    grad (the frozen embeddings give none) and breaks with DeepSpeed's gradient hooks."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    quantized = cfg.load_in in ("8bit", "4bit")
    model.config.use_cache = False  # the KV cache is useless in training and conflicts with checkpointing
    ckpt_kwargs = {"use_reentrant": False}
    if quantized:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.gradient_checkpointing, gradient_checkpointing_kwargs=ckpt_kwargs
        )
    elif cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=ckpt_kwargs)
        else:  # pragma: no cover - transformers 4
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=ckpt_kwargs)
    config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        model = get_peft_model(model, config)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        raise VichatError(f"--lora-targets {','.join(targets)}: {exc}. Linear layers of this model: "
                          f"{', '.join(linear_module_names(model)) or 'none found'}") from None
    if trainable_parameter_count(model) == 0:
        raise VichatError(f"LoRA on {', '.join(targets)} made no parameter trainable: check --lora-targets")
    return model


def linear_module_names(model: Any) -> list[str]:
    """Distinct last-component names of the model's linear layers (what ``target_modules`` matches)."""
    import torch

    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return sorted(names)


def trainable_parameters(model: Any) -> list["torch.nn.Parameter"]:
    return [p for p in model.parameters() if p.requires_grad]


def trainable_parameter_count(model: Any) -> int:
    return sum(p.numel() for p in trainable_parameters(model))


def total_parameter_count(model: Any) -> int:
    """All parameters; bitsandbytes 4-bit weights are stored two per byte, so they count double."""
    total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
    return total


def forward_logits(model: Any, batch: dict[str, "torch.Tensor"]) -> "torch.Tensor":
    """Logits for a collated batch. Packed batches carry ``position_ids`` and no ``attention_mask``:
    transformers then builds a causal mask per packed sample."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return model(**inputs, use_cache=False).logits


def make_optimizer(cfg: "TrainConfig", params: list["torch.nn.Parameter"]) -> "torch.optim.Optimizer":
    """AdamW (torch, fused torch, or bitsandbytes 8-bit) on the trainable parameters."""
    import torch

    kwargs = dict(lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_epsilon,
                  weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw_torch":
        return torch.optim.AdamW(params, **kwargs)
    if cfg.optimizer == "adamw_torch_fused":
        return torch.optim.AdamW(params, fused=True, **kwargs)
    import bitsandbytes as bnb

    if cfg.optimizer == "adamw_bnb_8bit":
        return bnb.optim.AdamW8bit(params, **kwargs)
    if cfg.optimizer == "paged_adamw_8bit":
        return bnb.optim.PagedAdamW8bit(params, **kwargs)
    raise VichatError(f"--optimizer {cfg.optimizer!r} is not supported")


def lr_factor(step: int, *, warmup: int, total: int, kind: str) -> float:
    """The learning-rate multiplier of optimizer step ``step`` (0-based).

    Warm-up rises linearly to 1 *at* step ``warmup - 1``, so the first update is not spent at lr 0
    (transformers' and DeepSpeed's linear warm-up start at 0); then ``linear`` decays to 0 at
    ``total``, ``cosine`` follows half a cosine to 0, ``constant`` stays at 1."""
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return max(0.0, 1.0 - progress)


def make_scheduler(optimizer: Any, cfg: "TrainConfig", total_steps: int) -> Any:
    """A ``LambdaLR`` over :func:`lr_factor`; stepped once per optimizer step."""
    import functools

    import torch

    factor = functools.partial(lr_factor, warmup=cfg.warmup_steps, total=total_steps, kind=cfg.lr_scheduler)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
