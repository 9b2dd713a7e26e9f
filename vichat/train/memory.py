"""A LoRA-aware estimate of the memory one GPU needs, from architecture numbers alone.

All sizes are bytes; reports print GiB (2**30 bytes, the unit ``nvidia-smi`` shows as MiB / 1024).
The formulas are stated in docs/training.md ("Memory model"); in short, per GPU:

* base weights: int8 = 1 byte per linear weight + one fp32 scale per output row; NF4 = 0.5 byte +
  quantisation constants (8-bit absmax per 64 weights, fp32 per 256 blocks: double quant). The
  parameters bitsandbytes leaves alone (embeddings, lm_head, norms, biases) are 2 bytes under
  DeepSpeed fp16/bf16 (its engine casts every floating-point parameter to the compute dtype) and
  4 bytes without DeepSpeed (``peft.prepare_model_for_kbit_training`` upcasts them to fp32). An
  unquantised base is stored at the compute dtype. Replicated on every GPU (only ZeRO-3 shards
  it, and ZeRO-3 is refused for quantised bases).
* LoRA: weights and gradients at 2 bytes under DeepSpeed mixed precision (plus a 4-byte fp32
  master copy), else 4; Adam moments 8 bytes (2 for 8-bit Adam). ZeRO-1 shards the optimizer
  state (master included), ZeRO-2 also the gradients, ZeRO-3 also the weights, over the world size.
* activations (Korthikanti et al. 2022, 16-bit): ``s*b*h*(34 + 5*a*s/h)`` bytes per layer; with
  gradient checkpointing ``2*s*b*h`` per layer (the saved layer input) plus one layer's full set.
  x2 for fp32 compute. LoRA adds, per targeted module, its fp32 dropout output and a 1-byte mask
  of the input (``5*s*b*in``) and the fp32 ``A x`` (``4*s*b*r``).
* logits: ``b*s*V`` fp32 for the loss and again for the softmax gradient (``8*b*s*V``), plus the
  lm_head's own 16-bit output when it computes in 16-bit (``+2*b*s*V``).
* margin: CUDA context and allocator fragmentation, 1.5 GiB + 10 % of the rest (10 % on CPU).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..specs import Architecture
from .shapes import computed_total_params, family_of, quantizable_params, quantized_rows

GIB = 2**30
DTYPE_BYTES = {"fp16": 2, "bf16": 2, "fp32": 4}
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
CUDA_CONTEXT = 1.5 * GIB
FRAGMENTATION = 0.10


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU, by component, and whether they fit ``budget``."""

    base_weights: float
    lora_weights: float
    lora_gradients: float
    optimizer_states: float
    activations: float
    logits: float
    margin: float
    budget: float

    @property
    def total(self) -> float:
        return (self.base_weights + self.lora_weights + self.lora_gradients + self.optimizer_states
                + self.activations + self.logits + self.margin)

    @property
    def fits(self) -> bool:
        return self.total <= self.budget

    def gib(self) -> dict[str, float]:
        """Every component and the total in GiB, rounded to 0.01."""
        d = {k: round(v / GIB, 2) for k, v in asdict(self).items()}
        d["total"] = round(self.total / GIB, 2)
        return d


def float_param_bytes(compute_dtype: str, deepspeed: bool) -> int:
    """Bytes per floating-point parameter that is not quantised (see the module docstring)."""
    if deepspeed and compute_dtype in ("fp16", "bf16"):
        return 2
    return 4


def base_weight_bytes(arch: Architecture, load_in: str, compute_dtype: str, deepspeed: bool = True) -> float:
    """Bytes of the frozen base model on one GPU (before any ZeRO-3 sharding)."""
    total = computed_total_params(arch) or arch.n_params
    if family_of(arch) is not None:
        quantized, rows = quantizable_params(arch), quantized_rows(arch)
    else:  # unknown layout: assume everything but the embeddings and head is linear
        quantized, rows = max(0, total - 2 * arch.vocab_size * arch.hidden_size), 0
    rest = (total - quantized) * float_param_bytes(compute_dtype, deepspeed)
    if load_in == "8bit":
        return quantized * 1 + rows * 4 + rest
    if load_in == "4bit":
        return quantized * NF4_BYTES + rest
    return total * DTYPE_BYTES[compute_dtype]


def activation_bytes(
    arch: Architecture, micro: int, seq: int, compute_dtype: str, checkpointing: bool,
    lora_in_features: int = 0, lora_modules: int = 0, lora_r: int = 0,
) -> float:
    """Saved activations for one micro-batch (without the logits)."""
    s, b, h, a, L = seq, micro, arch.hidden_size, arch.n_heads, arch.n_layers
    scale = DTYPE_BYTES[compute_dtype] / 2  # the formula is for 16-bit activations
    full_layer = s * b * h * (34 + 5 * a * s / h) * scale
    lora_layer = s * b * (5 * lora_in_features + 4 * lora_r * lora_modules)
    if checkpointing:
        return L * 2 * s * b * h * scale + full_layer + lora_layer
    return L * (full_layer + lora_layer)


def estimate_memory(
    arch: Architecture,
    *,
    micro: int,
    seq: int,
    load_in: str,
    compute_dtype: str,
    checkpointing: bool,
    n_lora: int,
    lora_in_features: int = 0,
    lora_modules: int = 0,
    lora_r: int = 8,
    zero_stage: int = 2,
    world: int = 1,
    deepspeed: bool = True,
    optimizer: str = "adamw_torch",
    device: str = "cuda",
    budget_gib: float = 24.0,
) -> MemoryEstimate:
    """Per-GPU memory of a LoRA run (see the module docstring for each term)."""
    zero = zero_stage if deepspeed else 0
    shard = max(world, 1)
    base = base_weight_bytes(arch, load_in, compute_dtype, deepspeed)
    if zero >= 3:
        base /= shard
    lora = float_param_bytes(compute_dtype, deepspeed)
    adam = 2 if "8bit" in optimizer else 8
    master = 4 if lora == 2 else 0
    weights = lora * n_lora / (shard if zero >= 3 else 1)
    grads = lora * n_lora / (shard if zero >= 2 else 1)
    optim = (adam + master) * n_lora / (shard if zero >= 1 else 1)
    acts = activation_bytes(arch, micro, seq, compute_dtype, checkpointing, lora_in_features, lora_modules, lora_r)
    head = 2 if (load_in == "none" or lora == 2) and compute_dtype in ("fp16", "bf16") else 0
    logits = (8 + head) * micro * seq * arch.vocab_size
    subtotal = base + weights + grads + optim + acts + logits
    margin = FRAGMENTATION * subtotal + (CUDA_CONTEXT if device == "cuda" else 0)
    return MemoryEstimate(base, weights, grads, optim, acts, logits, margin, budget_gib * GIB)


def largest_fitting_micro_batch(limit: int, **kwargs) -> int:
    """The largest micro-batch in ``1..limit`` whose estimate fits (0 if even 1 does not)."""
    best = 0
    for b in range(1, max(limit, 1) + 1):
        if not estimate_memory(micro=b, **kwargs).fits:
            break  # the estimate grows with b
        best = b
    return best
