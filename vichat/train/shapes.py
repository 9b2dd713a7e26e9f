"""Per-family module shapes: LoRA parameter counts and total parameters from architecture numbers.

No weights and no transformers: a dry run needs only :class:`vichat.specs.Architecture`. Each
family maps the *last component* of a module name (what peft matches in ``target_modules``) to the
``(in_features, out_features)`` of every linear layer of that name in one transformer block. A LoRA
adapter of rank ``r`` on a ``in -> out`` linear adds ``r * (in + out)`` parameters (A is ``r x in``,
B is ``out x r``; no bias).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from ..records import VichatError
from ..specs import Architecture

Shapes = dict[str, list[tuple[int, int]]]


def _kv_dim(arch: Architecture) -> int:
    n_kv = arch.n_kv_heads or arch.n_heads  # grouped-query attention shrinks k and v
    return arch.hidden_size // arch.n_heads * n_kv


def _bloom(a: Architecture) -> Shapes:
    h, ff = a.hidden_size, a.intermediate_size
    return {"query_key_value": [(h, 3 * h)], "dense": [(h, h)], "dense_h_to_4h": [(h, ff)], "dense_4h_to_h": [(ff, h)]}


def _gptj(a: Architecture) -> Shapes:
    h, ff = a.hidden_size, a.intermediate_size
    return {"q_proj": [(h, h)], "k_proj": [(h, h)], "v_proj": [(h, h)], "out_proj": [(h, h)],
            "fc_in": [(h, ff)], "fc_out": [(ff, h)]}


def _llama(a: Architecture) -> Shapes:
    h, ff, kv = a.hidden_size, a.intermediate_size, _kv_dim(a)
    return {"q_proj": [(h, h)], "k_proj": [(h, kv)], "v_proj": [(h, kv)], "o_proj": [(h, h)],
            "gate_proj": [(h, ff)], "up_proj": [(h, ff)], "down_proj": [(ff, h)]}


def _gpt2(a: Architecture) -> Shapes:
    h, ff = a.hidden_size, a.intermediate_size
    # "c_proj" names two layers per block (attention output and MLP output): LoRA targets both.
    return {"c_attn": [(h, 3 * h)], "c_proj": [(h, h), (ff, h)], "c_fc": [(h, ff)]}


def _bloom_total(a: Architecture) -> int:
    h, ff, L, V = a.hidden_size, a.intermediate_size, a.n_layers, a.vocab_size
    layer = 2 * h + (h * 3 * h + 3 * h) + (h * h + h) + 2 * h + (h * ff + ff) + (ff * h + h)
    return V * h + 2 * h + L * layer + 2 * h  # word embeddings (tied lm_head) + embedding/final LayerNorm


def _gptj_total(a: Architecture) -> int:
    h, ff, L, V = a.hidden_size, a.intermediate_size, a.n_layers, a.vocab_size
    layer = 2 * h + 4 * h * h + (h * ff + ff) + (ff * h + h)  # q/k/v/out have no bias
    return V * h + L * layer + 2 * h + (V * h + V)  # untied lm_head with bias


def _llama_total(a: Architecture) -> int:
    h, ff, L, V, kv = a.hidden_size, a.intermediate_size, a.n_layers, a.vocab_size, _kv_dim(a)
    layer = 2 * h * h + 2 * h * kv + 3 * h * ff + 2 * h  # RMSNorm weights, no biases
    return V * h + L * layer + h + V * h  # untied lm_head (Llama-2 style)


def _gpt2_total(a: Architecture) -> int:
    h, ff, L, V = a.hidden_size, a.intermediate_size, a.n_layers, a.vocab_size
    layer = 4 * h + (h * 3 * h + 3 * h) + (h * h + h) + (h * ff + ff) + (ff * h + h)
    return V * h + a.max_positions * h + L * layer + 2 * h  # tied lm_head


@dataclass(frozen=True)
class Family:
    """How one architecture family lays out its linear layers."""

    name: str
    shapes: Callable[[Architecture], Shapes]
    total: Callable[[Architecture], int]


FAMILIES: dict[str, Family] = {
    "bloom": Family("bloom", _bloom, _bloom_total),
    "gptneox": Family("gpt_neox", _bloom, lambda a: _bloom_total(a) - 2 * a.hidden_size + a.vocab_size * a.hidden_size),
    "gptj": Family("gptj", _gptj, _gptj_total),
    "llama": Family("llama", _llama, _llama_total),
    "mistral": Family("mistral", _llama, _llama_total),
    "qwen2": Family("qwen2", _llama, _llama_total),
    "gpt2": Family("gpt2", _gpt2, _gpt2_total),
}


def family_of(arch: Architecture) -> Family | None:
    """The :class:`Family` for ``arch.family`` ("gpt-j", "GPT_J" and "gptj" are the same), or None."""
    key = arch.family.lower().replace("-", "").replace("_", "")
    return FAMILIES.get(key)


def module_shapes(arch: Architecture) -> Shapes:
    """``{module name: [(in, out), ...]}`` for one block; raises for a family without a table."""
    fam = family_of(arch)
    if fam is None:
        raise VichatError(
            f"architecture family {arch.family!r} has no module-shape table, so LoRA parameters cannot be "
            f"counted without weights. Known families: {', '.join(sorted(FAMILIES))} "
            "(add one in vichat/train/shapes.py)."
        )
    return fam.shapes(arch)


def resolve_targets(arch: Architecture, targets: Sequence[str]) -> list[str]:
    """Module names (last component) that ``targets`` select; ``"all-linear"`` selects every one.

    Raises :class:`VichatError` naming an unknown module and listing the family's modules.
    """
    shapes = module_shapes(arch)
    out: list[str] = []
    for target in targets:
        if target == "all-linear":
            out.extend(n for n in shapes if n not in out)
            continue
        name = target.rsplit(".", 1)[-1]  # peft matches "self_attention.query_key_value" by suffix too
        if name not in shapes:
            raise VichatError(
                f"LoRA target {target!r} is not a linear module of the {arch.family} family. "
                f"Known modules: {', '.join(shapes)} (or 'all-linear')."
            )
        if name not in out:
            out.append(name)
    return out


def lora_param_count(arch: Architecture, targets: Sequence[str], r: int) -> int:
    """Trainable LoRA parameters: ``n_layers * sum(r * (in + out))`` over the targeted modules."""
    shapes = module_shapes(arch)
    per_layer = sum(r * (i + o) for name in resolve_targets(arch, targets) for i, o in shapes[name])
    return arch.n_layers * per_layer


def lora_input_features(arch: Architecture, targets: Sequence[str]) -> int:
    """Sum of ``in_features`` over the targeted modules of one block (LoRA's saved activations)."""
    shapes = module_shapes(arch)
    return sum(i for name in resolve_targets(arch, targets) for i, _ in shapes[name])


def lora_module_count(arch: Architecture, targets: Sequence[str]) -> int:
    """Linear layers of one block that ``targets`` adapt (gpt2's ``c_proj`` counts twice)."""
    shapes = module_shapes(arch)
    return sum(len(shapes[name]) for name in resolve_targets(arch, targets))


def quantizable_params(arch: Architecture) -> int:
    """Weights of every linear layer in the blocks: what bitsandbytes quantises (lm_head is skipped)."""
    return arch.n_layers * sum(i * o for shapes in module_shapes(arch).values() for i, o in shapes)


def quantized_rows(arch: Architecture) -> int:
    """Output rows of the blocks' linear layers (LLM.int8 keeps one fp32 scale per row)."""
    return arch.n_layers * sum(o for shapes in module_shapes(arch).values() for _, o in shapes)


def computed_total_params(arch: Architecture) -> int | None:
    """Total parameters computed from the shape numbers (embeddings + blocks + head), or None."""
    fam = family_of(arch)
    return fam.total(arch) if fam is not None else None


def total_params(arch: Architecture) -> int:
    """``arch.n_params`` when the plugin gives it, else the computed count (0 if neither)."""
    return arch.n_params or computed_total_params(arch) or 0
