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
* the step's peak = the activations saved for backward + the larger of two transients: the loss's
  (the logits) and one layer's backward (with gradient checkpointing: its recomputation). Measured
  by bench/memory.py (forward + backward of real transformers BLOOM / GPT-J models, CPU, fp32 and
  bf16; ``ACTIVATION_BYTES`` holds the fitted coefficients, in bytes per element of ``s*b*h`` and
  of ``a*s*s*b``; BLOOM's eager attention keeps the fp32 softmax, GPT-J's SDPA keeps no s x s
  tensor). With checkpointing a layer keeps only its input (``d*s*b*h``, d = compute bytes).
* the loss's transient, ``T = b*s`` tokens, vocabulary V: ``plain`` 12 bytes per logit (the fp32
  log-softmax output, its gradient and the input's gradient alive together in backward; measured,
  fp32 and bf16 alike); ``chunked`` 4 bytes x ``rows x V``, rows = the equal chunks' size (at most
  ``min(T, chunk)``), for the chunk's fp32 logits (softmax and gradient computed in place; 6 bytes
  with 16-bit weights: the 16-bit product before its upcast, the 16-bit gradient before its
  matmul) + the hidden states' gradient; ``fused`` (cut-cross-entropy's CUDA kernel) the hidden
  states' gradient and a copy, + for a biased head (GPT-J) the weight with the bias folded in,
  ``V x (h + 1)`` at the head's dtype (not measured on a GPU yet); on CPU (the package's
  torch.compile version, which holds the logits) counted as ``plain``.
* margin: CUDA context and allocator fragmentation, 1.5 GiB + 10 % of the rest (10 % on CPU).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..specs import Architecture
from .shapes import computed_total_params, family_of, quantizable_params, quantized_rows

GIB = 2**30
#: Families whose LM head has a bias (the fused loss folds it into a copy of the weight).
HEAD_BIAS_FAMILIES = ("gptj",)
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
    activations: float  # saved for backward at the step's peak
    logits: float  # the loss's transient
    margin: float
    budget: float
    backward: float = 0.0  # one layer's backward (recomputation with checkpointing) transient

    @property
    def step_peak(self) -> float:
        """Forward + backward: the saved activations plus the larger transient."""
        return self.activations + max(self.logits, self.backward)

    @property
    def total(self) -> float:
        return (self.base_weights + self.lora_weights + self.lora_gradients + self.optimizer_states
                + self.step_peak + self.margin)

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


#: Bytes per element of ``s*b*h`` and of ``a*s*s*b`` (heads x sequence^2 x batch), by family and
#: compute width (4 = fp32, 2 = fp16/bf16): ``saved`` per layer without checkpointing,
#: ``transient`` of one layer's backward without / ``recompute`` with checkpointing. Fitted to
#: bench/memory.py measurements (transformers 5 eager BLOOM, SDPA GPT-J; see docs/training.md).
#: A ``*_wide`` pair is a second branch for the same term, and the term is the larger of the two: a
#: layer's backward peaks either in its attention (the s x s tensors: the first pair, which grows
#: with ``a*s/h``) or in its MLP (4h-wide intermediates: the ``_wide`` pair, which dominates when
#: ``a*s/h`` is small, as at hidden 4096 and up).
ACTIVATION_BYTES: dict[tuple[str, int], dict[str, tuple[float, float]]] = {
    ("bloom", 4): {"saved": (44.7, 3.95), "transient": (42.0, 6.1), "recompute": (51.7, 16.0),
                   "transient_wide": (92.0, 0.0), "recompute_wide": (144.6, 4.07)},
    ("bloom", 2): {"saved": (27.2, 5.95), "transient": (26.3, 4.2), "recompute": (14.5, 14.3),
                   "transient_wide": (44.0, 0.0), "recompute_wide": (76.2, 6.07)},
    ("gptj", 4): {"saved": (99.5, 0.0), "transient": (0.0, 0.0), "recompute": (145.3, 0.0)},
    ("gptj", 2): {"saved": (58.5, 0.0), "transient": (25.1, 0.0), "recompute": (83.1, 0.0)},
}


def _coefficients(family: str, width: int) -> dict[str, tuple[float, float]]:
    # Other families: BLOOM's (eager attention keeps s x s tensors: the safe side).
    return ACTIVATION_BYTES.get((family, width)) or ACTIVATION_BYTES[("bloom", width)]


def activation_bytes(
    arch: Architecture, micro: int, seq: int, compute_dtype: str, checkpointing: bool,
    lora_in_features: int = 0, lora_modules: int = 0, lora_r: int = 0,
) -> tuple[float, float]:
    """``(saved, backward transient)`` bytes of one micro-batch's activations (without the loss)."""
    s, b, h, a, L = seq, micro, arch.hidden_size, arch.n_heads, arch.n_layers
    width = DTYPE_BYTES[compute_dtype]
    c = _coefficients(arch.family, width)
    sbh, ssb = s * b * h, a * s * s * b

    def term(key: str) -> float:
        return max(c[k][0] * sbh + c[k][1] * ssb for k in (key, key + "_wide") if k in c)

    if checkpointing:
        return L * width * sbh, term("recompute")
    return L * term("saved"), term("transient")


def loss_bytes(loss: str, tokens: int, vocab: int, hidden: int, compute_dtype: str,
               folded_head_bytes: float = 0.0) -> float:
    """The loss's transient for ``tokens`` trained positions (see the module docstring);
    ``folded_head_bytes``: the fused loss's copy of a biased head (:func:`vichat.train.loss.fold_bias`)."""
    width = DTYPE_BYTES[compute_dtype]
    if loss == "plain":
        return 12 * tokens * vocab
    hidden_grad = 2 * width * tokens * hidden  # the trained positions' hidden states, gathered, and their gradient
    if loss == "chunked":
        from .loss import chunk_rows

        # one chunk's fp32 logits (softmax and gradient computed in place), plus with 16-bit weights
        # the 16-bit product before its upcast and the 16-bit gradient before its matmul
        per_logit = 4 + (width if width < 4 else 0)
        return per_logit * chunk_rows(vocab, tokens) * vocab + hidden_grad
    return hidden_grad + folded_head_bytes  # fused kernel: no logits in memory


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
    loss: str = "plain",
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
    acts, backward = activation_bytes(arch, micro, seq, compute_dtype, checkpointing, lora_in_features,
                                      lora_modules, lora_r)
    if loss == "fused" and device != "cuda":
        # cut-cross-entropy's torch.compile version holds the trained positions' logits: counted as
        # the plain loss (an upper bound; not measured)
        loss = "plain"
    folded = 0.0
    if loss == "fused" and family_of(arch) is not None and family_of(arch).name in HEAD_BIAS_FAMILIES:
        # the head's own dtype, as in base_weight_bytes: the compute dtype for an unquantised base
        head = DTYPE_BYTES[compute_dtype] if load_in == "none" else float_param_bytes(compute_dtype, deepspeed)
        folded = head * arch.vocab_size * (arch.hidden_size + 1)
    logits = loss_bytes(loss, micro * seq, arch.vocab_size, arch.hidden_size, compute_dtype, folded)
    subtotal = base + weights + grads + optim + acts + max(logits, backward)
    margin = FRAGMENTATION * subtotal + (CUDA_CONTEXT if device == "cuda" else 0)
    return MemoryEstimate(base, weights, grads, optim, acts, logits, margin, budget_gib * GIB, backward)


def largest_fitting_micro_batch(limit: int, **kwargs) -> int:
    """The largest micro-batch in ``1..limit`` whose estimate fits (0 if even 1 does not)."""
    best = 0
    for b in range(1, max(limit, 1) + 1):
        if not estimate_memory(micro=b, **kwargs).fits:
            break  # the estimate grows with b
        best = b
    return best
