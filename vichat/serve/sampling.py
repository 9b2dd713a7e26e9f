"""Choosing the next token: repetition penalty, temperature, top-k, top-p, then a seeded draw.

The same order and arithmetic as transformers' ``generate`` (``RepetitionPenaltyLogitsProcessor``,
then the temperature, top-k and top-p warpers), so greedy serving reproduces ``generate`` token for
token, and a seeded sampler is reproducible. Each request has its own :class:`Sampler` and its own
``torch.Generator``: what one user draws never depends on who else is being served.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Sequence

from ..specs import Decoding

if TYPE_CHECKING:  # pragma: no cover
    import torch


def request_seed(seed: int, *parts: str) -> int:
    """A 63-bit seed from ``seed`` and the request's text: the same question gets the same draw
    whether it runs alone or next to others."""
    h = hashlib.sha256(str(seed).encode())
    for part in parts:
        h.update(b"\x00" + part.encode("utf-8"))
    return int.from_bytes(h.digest()[:8], "little") >> 1


def apply_repetition_penalty(logits: "torch.Tensor", seen: "torch.Tensor", penalty: float) -> "torch.Tensor":
    """CTRL's penalty as transformers applies it: a seen token's logit is divided by ``penalty``
    when positive and multiplied when negative (``seen`` = prompt and generated ids)."""
    import torch

    if penalty == 1.0 or seen.numel() == 0:
        return logits
    score = logits.gather(-1, seen)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return logits.scatter(-1, seen, score)


def top_k_filter(logits: "torch.Tensor", k: int) -> "torch.Tensor":
    """Keep the ``k`` largest logits (ties with the k-th kept too); ``k <= 0`` keeps all."""
    import torch

    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k).values[..., -1, None]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: "torch.Tensor", p: float) -> "torch.Tensor":
    """Nucleus filtering: keep the smallest set of tokens whose probability reaches ``p``."""
    import torch

    if p >= 1.0:
        return logits
    sorted_logits, sorted_idx = torch.sort(logits, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - p)
    remove[..., -1:] = False  # the most likely token always stays
    remove = remove.scatter(-1, sorted_idx, remove)
    return logits.masked_fill(remove, float("-inf"))


class Sampler:
    """Next-token choice for one request; ``temperature <= 0`` is greedy (argmax)."""

    def __init__(self, decoding: Decoding, seed: int | None = None) -> None:
        import torch

        self.decoding = decoding
        self.generator: torch.Generator | None = None
        if decoding.temperature > 0:
            self.generator = torch.Generator()
            if seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(seed)

    def __call__(self, logits: "torch.Tensor", seen: Sequence[int] | "torch.Tensor") -> int:
        """The next id from the last position's ``logits`` (1-D, vocab) given every id so far."""
        import torch

        d = self.decoding
        logits = logits.float()
        seen_t = seen if isinstance(seen, torch.Tensor) else torch.tensor(list(seen), dtype=torch.long)
        logits = apply_repetition_penalty(logits, seen_t.to(logits.device), d.repetition_penalty)
        if self.generator is None:
            return int(torch.argmax(logits))
        logits = logits / d.temperature
        logits = top_p_filter(top_k_filter(logits, d.top_k), d.top_p)
        probs = logits.softmax(dim=-1).cpu()  # drawn on the CPU: one generator, any device
        return int(torch.multinomial(probs, 1, generator=self.generator))
