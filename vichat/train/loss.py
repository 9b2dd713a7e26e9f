"""The training loss: next-token cross-entropy summed over the response tokens, three ways.

- ``plain``: the model's full logits, then :func:`token_loss_sum`. The logits (batch x sequence x
  vocabulary, upcast to fp32) are alive from the LM head to the end of backward: for BLOOM's
  250,880-word vocabulary the largest memory term of a LoRA run.
- ``chunked``: pure torch, any device. The LM head and the cross-entropy are computed together over
  chunks of the *trained* positions only (prompt and padding positions never meet the LM head);
  each chunk's logits live only while that chunk is processed, and the gradient with respect to
  the hidden states is computed in the forward pass (as Liger's fused kernel does), so backward
  needs no second matmul. Peak extra memory: one chunk of logits plus the hidden states' gradient.
- ``fused``: Apple's cut-cross-entropy (``linear_cross_entropy``), a maintained package: on CUDA
  its Triton kernel ("cce"), which never materialises the logits; elsewhere the package's own
  ``torch.compile`` implementation ("torch_compile": the trained rows' logits at once, so no
  memory saving; it exists so that the same call runs, and is tested, without a GPU). The package
  takes no bias: a biased head (GPT-J) is folded, ``h @ W.T + b == [h, 1] @ [W | b].T``, which
  copies the head's weight for the step (see :func:`fused_loss_sum`). Not a dependency:
  ``pip install 'vichat[fused]'``.

All three return the *sum* of token losses; the caller divides by the step's token count (see
:mod:`vichat.train.hf_trainer`), so every response token weighs the same.
"""

from __future__ import annotations

import contextlib
import importlib.util
import warnings
from typing import TYPE_CHECKING, Any, Iterator

from ..data.tokenize import IGNORE_INDEX
from ..records import VichatError

if TYPE_CHECKING:  # pragma: no cover
    import torch

LOSSES = ("auto", "fused", "chunked", "plain")
#: Bytes of fp32 logits per chunk of the chunked loss (267 tokens at BLOOM's 250,880 words): the
#: loss's peak with fp32 weights (softmax and gradient are computed in the chunk's own buffer).
CHUNK_BYTES = 2**28


def chunk_rows(vocab_size: int, tokens: int | None = None) -> int:
    """Tokens per chunk of the chunked loss for a vocabulary of ``vocab_size``: at most
    :data:`CHUNK_BYTES` of fp32 logits; given the number of trained ``tokens``, the chunks are made
    equal, so none is larger than needed (300 tokens at 250,880 words: two chunks of 150, not 267 + 33)."""
    rows = max(16, CHUNK_BYTES // (4 * vocab_size))
    if not tokens:
        return rows
    return -(-tokens // -(-tokens // rows))


def fused_backend() -> str | None:
    """``"cce"`` when cut-cross-entropy is importable, else None."""
    return "cce" if importlib.util.find_spec("cut_cross_entropy") is not None else None


def fused_impl(device: "str | torch.device") -> str:
    """cut-cross-entropy's implementation for tensors on ``device``: its Triton kernel (``"cce"``) on
    CUDA, else ``"torch_compile"`` (the package's plain matmul + cross-entropy under torch.compile)."""
    return "cce" if str(device).startswith("cuda") else "torch_compile"


def resolve_loss(name: str, *, device: str, zero_stage: int, world: int = 1) -> str:
    """The loss a run uses: ``auto`` = fused on CUDA when a kernel is installed, else chunked.

    Under ZeRO-3 the LM-head weight is partitioned across processes, so a loss that reads it
    directly cannot run: ``auto`` falls back to ``plain`` there, and an explicit choice is refused."""
    if name not in LOSSES:
        raise VichatError(f"--loss {name!r} is not one of {', '.join(LOSSES)}")
    sharded = zero_stage == 3 and world > 1
    if name == "auto":
        if sharded:
            return "plain"
        return "fused" if device.startswith("cuda") and fused_backend() else "chunked"
    if sharded and name != "plain":
        raise VichatError(f"--loss {name} reads the LM-head weight, which ZeRO-3 partitions across processes: "
                          "use --loss plain with --zero-stage 3, or --zero-stage 2")
    if name == "fused" and fused_backend() is None:
        raise VichatError("--loss fused needs cut-cross-entropy: pip install 'vichat[fused]' "
                          "(or use --loss chunked, the pure-torch version)")
    return name


def loss_notes(loss: str, device: str) -> list[str]:
    """What a run's user should know about its loss on ``device`` (printed with the run's warnings)."""
    if loss == "fused" and not device.startswith("cuda"):
        return ["--loss fused on CPU runs cut-cross-entropy's torch.compile implementation (its Triton kernel "
                "is CUDA only): the same values, but it holds all trained positions' logits at once and "
                "compiles on first use; --loss chunked needs less memory"]
    return []


def planned_loss(name: str, *, device: str, zero_stage: int, world: int) -> str:
    """The loss a dry run plans with: like :func:`resolve_loss`, but a plan for GPUs made on a machine
    without them is not refused (``fused`` stays ``fused``; ``auto`` is fused only when a kernel is
    installed here, else the chunked loss, whose memory is the larger of the two)."""
    if zero_stage == 3 and world > 1 and name in ("auto", "plain"):
        return "plain"
    if name == "auto":
        return "fused" if device == "cuda" and fused_backend() else "chunked"
    return name


def token_loss_sum(logits: "torch.Tensor", labels: "torch.Tensor") -> "torch.Tensor":
    """Sum of next-token cross-entropy over the positions whose label is not ``-100`` (plain path).

    Logits are upcast to fp32: a softmax over a 250k vocabulary in fp16 loses the small probabilities."""
    import torch.nn.functional as F

    # Shift the labels, not the logits: slicing a batch's logits would copy all of them (b x s x V).
    shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[:, 1:].to(logits.device)
    flat = logits.float().reshape(-1, logits.size(-1))
    return F.cross_entropy(flat, shift_labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")


def _trained_positions(hidden: "torch.Tensor", labels: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """Hidden states that predict a trained label, and those labels (the shift applied)."""
    h = hidden[:, :-1, :].reshape(-1, hidden.size(-1))
    y = labels[:, 1:].reshape(-1).to(h.device)
    keep = (y != IGNORE_INDEX).nonzero().squeeze(1)
    return h.index_select(0, keep), y.index_select(0, keep)


class _ChunkedLinearCE:
    """An autograd Function (built lazily so that importing this module does not import torch)."""

    fn: Any = None

    @classmethod
    def get(cls) -> Any:
        if cls.fn is None:
            import torch

            class ChunkedLinearCrossEntropy(torch.autograd.Function):
                @staticmethod
                def forward(ctx, h, weight, bias, targets, chunk):  # type: ignore[override]
                    need_h = h.requires_grad
                    need_w = weight.requires_grad
                    need_b = bias is not None and bias.requires_grad
                    total = torch.zeros((), dtype=torch.float32, device=h.device)
                    grad_h = torch.empty_like(h) if need_h else None
                    grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
                    grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
                    w = weight
                    rows = torch.arange(min(chunk, h.size(0)), device=h.device)
                    for start in range(0, h.size(0), chunk):
                        hc = h[start : start + chunk]
                        tc = targets[start : start + chunk]
                        logits = (hc @ w.t()).float()  # fp32 weights: no copy
                        if bias is not None:
                            logits += bias.float()
                        # logsumexp by hand, in the logits' own buffer: torch.logsumexp would allocate
                        # a second chunk-sized temporary (and exp would then run twice).
                        picked = logits.gather(1, tc[:, None]).squeeze(1)
                        peak = logits.amax(dim=-1, keepdim=True)
                        logits.sub_(peak).exp_()
                        norm = logits.sum(dim=-1, keepdim=True)
                        total += (peak.squeeze(1) + norm.squeeze(1).log() - picked).sum()
                        if need_h or need_w or need_b:
                            # d(sum CE)/d(logits) = softmax - one_hot(target), in place.
                            logits.div_(norm)
                            logits[rows[: tc.numel()], tc] -= 1.0
                            if need_h:
                                # 16-bit weights: a 16-bit copy of the chunk for the matmul (fp32: none)
                                grad_h[start : start + chunk] = logits.to(h.dtype) @ w
                            if need_w:
                                grad_w.addmm_(logits.t(), hc.float())
                            if need_b:
                                grad_b += logits.sum(0)
                        del logits
                    ctx.save_for_backward(grad_h, grad_w, grad_b)
                    ctx.weight_dtype = weight.dtype
                    ctx.bias_dtype = None if bias is None else bias.dtype
                    return total

                @staticmethod
                def backward(ctx, grad_out):  # type: ignore[override]
                    grad_h, grad_w, grad_b = ctx.saved_tensors
                    gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
                    gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
                    gb = (grad_b * grad_out).to(ctx.bias_dtype) if grad_b is not None else None
                    return gh, gw, gb, None, None

            cls.fn = ChunkedLinearCrossEntropy
        return cls.fn


def chunked_loss_sum(hidden: "torch.Tensor", weight: "torch.Tensor", bias: "torch.Tensor | None",
                     labels: "torch.Tensor", chunk: int | None = None) -> "torch.Tensor":
    """Sum of token losses of ``hidden @ weight.T + bias`` against ``labels`` (shifted, ``-100`` skipped),
    never holding more than ``chunk`` rows of logits (see the module docstring)."""
    h, y = _trained_positions(hidden, labels)
    if h.size(0) == 0:
        return hidden.sum() * 0.0  # keeps the graph (and DeepSpeed's hooks) alive for a dummy batch
    if h.dtype != weight.dtype:
        # Under CUDA autocast (Trainer's fp16/bf16 on one GPU) the final LayerNorm returns fp32 while
        # a 16-bit head stays 16-bit, and the loss runs outside the forward's autocast; a k-bit base
        # prepared by peft has an fp32 head. Compute in the head's dtype, as the model's own LM head
        # does under autocast: the trained rows are cheap to cast, the V x h weight is not.
        h = h.to(weight.dtype)
    return _ChunkedLinearCE.get().apply(h, weight, bias, y, chunk or chunk_rows(weight.size(0), h.size(0)))


_HALF = ("float16", "bfloat16")


def _kernel_dtype(h: "torch.Tensor", weight: "torch.Tensor") -> "torch.dtype | None":
    """The 16-bit dtype the hidden states go to the Triton kernel in, or None when the run has none.

    The kernel's backward takes fp16/bf16 hidden states only (it asserts so); the weight may be fp32
    (it is cast tile by tile inside the kernel). fp32 hidden states arise where the final LayerNorm
    runs in fp32 (under autocast, or ``prepare_model_for_kbit_training``'s upcast)."""
    import torch

    for candidate in (h.dtype, weight.dtype):
        if str(candidate).removeprefix("torch.") in _HALF:
            return candidate
    if torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return None


def fold_bias(h: "torch.Tensor", weight: "torch.Tensor", bias: "torch.Tensor") -> tuple["torch.Tensor", "torch.Tensor"]:
    """``([h, 1], [W | b])``: ``h @ W.T + b == [h, 1] @ [W | b].T`` for a loss that takes no bias.

    Copies the weight (V x (d + 1) at its dtype; GPT-J: 50,400 x 4,097 x 2 bytes = 394 MiB in fp16),
    alive until the loss's backward; gradients reach ``W`` and ``b`` through the concatenation."""
    import torch

    ones = h.new_ones(h.size(0), 1)
    return torch.cat([h, ones], dim=1), torch.cat([weight, bias.to(weight.dtype)[:, None]], dim=1)


def fused_loss_sum(hidden: "torch.Tensor", weight: "torch.Tensor", bias: "torch.Tensor | None",
                   labels: "torch.Tensor", *, impl: str | None = None) -> "torch.Tensor":
    """The same sum through cut-cross-entropy's ``linear_cross_entropy``.

    :param impl: ``"cce"`` (the Triton kernel, CUDA) or ``"torch_compile"``; default
        :func:`fused_impl` of the hidden states' device.

    Only the trained positions are passed (shifted and unmasked here, as for the chunked loss), so
    the package's own ``ignore_index``/``shift`` handling has nothing left to do. A biased head is
    folded (:func:`fold_bias`). The Triton kernel keeps the package's default gradient filter
    (``filter_eps="high"``: softmax entries below 2**-5 of the 16-bit epsilon are skipped in
    backward, as in the paper); a run whose hidden states and weight are both fp32 outside autocast
    has no 16-bit dtype for the kernel and gets the chunked loss instead, with a warning."""
    h, y = _trained_positions(hidden, labels)
    if h.size(0) == 0:
        return hidden.sum() * 0.0
    if fused_backend() is None:
        raise VichatError("--loss fused needs cut-cross-entropy: pip install 'vichat[fused]'")
    from cut_cross_entropy import linear_cross_entropy

    impl = impl or fused_impl(h.device)
    if impl == "cce":
        dtype = _kernel_dtype(h, weight)
        if dtype is None:
            warnings.warn("--loss fused: cut-cross-entropy's kernel needs fp16 or bf16 hidden states and this "
                          "run is fp32 throughout: using the chunked loss (the same values)", stacklevel=2)
            return _ChunkedLinearCE.get().apply(h, weight, bias, y, chunk_rows(weight.size(0), h.size(0)))
        h = h.to(dtype)
    if bias is not None:
        h, weight = fold_bias(h, weight, bias)
    return linear_cross_entropy(h, weight, y, ignore_index=IGNORE_INDEX, reduction="sum", shift=False,
                                impl=impl).float()


@contextlib.contextmanager
def lm_head_input(causal_lm: Any) -> Iterator[dict[str, Any]]:
    """While active, the model's LM head returns an empty tensor and its input (the final hidden
    states) is captured in the yielded dict under ``"hidden"``: the model's own forward (and any
    engine around it) runs unchanged, but the full logits are never computed."""
    head = causal_lm.get_output_embeddings()
    if head is None:
        raise VichatError(f"{type(causal_lm).__name__} has no output embeddings: use --loss plain")
    captured: dict[str, Any] = {}

    def forward(x: "torch.Tensor") -> "torch.Tensor":
        captured["hidden"] = x
        return x.new_empty(*x.shape[:-1], 0)

    head.forward = forward  # an instance attribute shadows the class's forward
    try:
        yield captured
    finally:
        del head.forward


def head_parameters(causal_lm: Any) -> tuple["torch.Tensor", "torch.Tensor | None"]:
    """The LM head's weight (BLOOM: the tied embedding matrix) and bias (GPT-J has one)."""
    head = causal_lm.get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


def causal_lm_of(model: Any) -> Any:
    """The transformers causal LM (the module with the LM head) inside a peft model, or the model itself."""
    inner = model
    for _ in range(4):  # PeftModel -> LoraModel -> *ForCausalLM
        name = type(inner).__name__
        if name.startswith("Peft"):
            inner = inner.base_model
        elif name.startswith("Lora"):
            inner = inner.model
        else:
            return inner
    raise VichatError(f"{type(model).__name__}: cannot find the causal LM with the LM head; use --loss plain")


def batch_loss_sum(model: Any, inputs: dict[str, Any], loss: str, *, unwrapped: Any = None) -> "torch.Tensor":
    """Forward ``inputs`` through ``model`` (a peft model, or an engine around one) and return the
    sum of token losses by ``loss`` (``plain``, ``chunked`` or ``fused``)."""
    labels = inputs["labels"]
    feed = {k: v for k, v in inputs.items() if k != "labels"}
    if loss == "plain":
        return token_loss_sum(model(**feed, use_cache=False).logits, labels)
    lm = causal_lm_of(unwrapped if unwrapped is not None else model)
    with lm_head_input(lm) as captured:
        model(**feed, use_cache=False)
    weight, bias = head_parameters(lm)
    hidden = captured["hidden"]
    if loss == "chunked":
        return chunked_loss_sum(hidden, weight, bias, labels)
    return fused_loss_sum(hidden, weight, bias, labels)
