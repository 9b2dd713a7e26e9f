"""Run a CPU forward pass with the dtypes and dropout masks it would have on a CUDA GPU, to measure its memory.

Two things make a CPU step's memory differ from the same step on a GPU:

* **autocast's op policy.** ``torch.autocast("cuda", bf16)`` runs matrix products in 16 bits and
  LayerNorm, softmax, ``exp``, ``sum``... in fp32, so under Trainer's ``bf16=True`` a BLOOM block's
  residual stream is fp32. ``torch.autocast("cpu")`` has a different list (its LayerNorm stays 16-bit).
* **dropout masks.** CUDA's fused dropout saves a 1-byte boolean mask for backward; the CPU path
  multiplies by a noise tensor of the input's dtype and saves that (4 bytes per element in fp32).

:func:`cuda_like` applies both through a ``TorchFunctionMode``: the ops of CUDA autocast's lists
(PyTorch's "Autocast Op Reference", CUDA) get their inputs cast as autocast would, and dropout runs
as an autograd function that saves a boolean mask. Only the forward is affected, as with autocast.
It reproduces memory (which tensors exist, at which dtype), not CUDA's numerics or speed.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

#: CUDA autocast's "ops that can autocast to float16/bfloat16" (those a causal LM uses).
LOWER = {"linear", "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "baddbmm", "addmm", "addbmm", "addmv",
         "mv", "addr", "chain_matmul", "multi_dot", "prelu", "scaled_dot_product_attention",
         "conv1d", "conv2d", "conv3d"}
#: CUDA autocast's "ops that can autocast to float32".
FP32 = {"layer_norm", "group_norm", "softmax", "log_softmax", "softmin", "exp", "expm1", "log", "log10",
        "log1p", "log2", "pow", "__pow__", "__rpow__", "rsqrt", "reciprocal", "__rdiv__", "__rtruediv__",
        "sum", "prod", "cumsum", "cumprod", "norm", "normalize", "softplus", "acos", "asin", "cosh", "sinh",
        "tan", "erfinv", "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "kl_div", "cosine_similarity",
        "dist", "cdist", "pdist", "renorm", "binary_cross_entropy_with_logits"}


def _cast(value: Any, dtype: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
        return value.to(dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


class _BoolMaskDropout:
    """Dropout that keeps a 1-byte mask for backward, as CUDA's ``native_dropout`` does."""

    _fn = None

    @classmethod
    def apply(cls, x: Any, p: float) -> Any:
        import torch

        if cls._fn is None:
            class Fn(torch.autograd.Function):
                @staticmethod
                def forward(ctx, inp, prob):  # noqa: ANN001
                    mask = torch.rand_like(inp, dtype=torch.float32) >= prob
                    ctx.save_for_backward(mask)
                    ctx.scale = 1.0 / (1.0 - prob)
                    return inp * mask * ctx.scale

                @staticmethod
                def backward(ctx, grad):  # noqa: ANN001
                    (mask,) = ctx.saved_tensors
                    return grad * mask * ctx.scale, None

            cls._fn = Fn
        return cls._fn.apply(x, p)


@contextlib.contextmanager
def cuda_like(dtype: Any | None) -> Iterator[None]:
    """Within the block, CUDA autocast's casts to ``dtype`` (``None``: no autocast, masks only) and
    CUDA's boolean dropout masks."""
    import torch
    from torch.overrides import TorchFunctionMode

    class Mode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            kwargs = kwargs or {}
            name = getattr(func, "__name__", "")
            if name == "dropout" and torch.is_grad_enabled():
                x = args[0]
                p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
                training = kwargs.get("training", args[2] if len(args) > 2 else True)
                if training and p > 0 and isinstance(x, torch.Tensor) and x.requires_grad:
                    return _BoolMaskDropout.apply(x, p)
            elif dtype is not None and name in LOWER:
                args, kwargs = _cast(args, dtype), {k: _cast(v, dtype) for k, v in kwargs.items()}
            elif dtype is not None and name in FP32 and kwargs.get("dtype") is None:
                args, kwargs = _cast(args, torch.float32), {k: _cast(v, torch.float32) for k, v in kwargs.items()}
            return func(*args, **kwargs)

    with Mode():
        yield
