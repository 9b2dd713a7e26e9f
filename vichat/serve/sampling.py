"""Choosing the next token with transformers' own logits processors, per request.

:func:`logits_processors` builds, for one request's :class:`vichat.specs.Decoding`, the same
``LogitsProcessorList`` that ``model.generate(**decoding.as_generate_kwargs())`` builds:
``RepetitionPenaltyLogitsProcessor``, then (sampling only) ``TemperatureLogitsWarper``,
``TopKLogitsWarper`` and ``TopPLogitsWarper``, in generate's order. So the app, ``vichat eval
generate`` (which calls ``generate``) and plain ``generate`` sample the same way, and greedy serving
reproduces ``generate`` token for token. A batch row is processed with its own list (requests in one
batch have their own settings); each request draws from its own seeded ``torch.Generator``, so what
one user draws never depends on who else is in the batch.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any, Sequence

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


def logits_processors(decoding: Decoding) -> Any:
    """transformers' ``LogitsProcessorList`` for ``decoding``, as ``generate`` builds it (its
    ``_get_logits_processor`` adds the penalty first, then the warpers when sampling)."""
    from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                              TopKLogitsWarper, TopPLogitsWarper)

    procs = LogitsProcessorList()
    if decoding.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(penalty=decoding.repetition_penalty))
    if decoding.temperature > 0:
        if decoding.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(decoding.temperature))
        if decoding.top_k > 0:
            procs.append(TopKLogitsWarper(top_k=decoding.top_k, min_tokens_to_keep=1))
        if decoding.top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p=decoding.top_p, min_tokens_to_keep=1))
    return procs


def apply(processors: Any, input_ids: "torch.Tensor", scores: "torch.Tensor") -> "torch.Tensor":
    """``processors(input_ids, scores)`` without ``LogitsProcessorList.__call__``'s per-call
    ``inspect.signature`` of every processor (for keyword arguments none of these take): 0.19 ms
    of a one-user decoding step on the tiny model, paid for every step."""
    for processor in processors:
        scores = processor(input_ids, scores)
    return scores


class Sampler:
    """Next-token choice for one request; ``temperature <= 0`` is greedy (argmax).

    Requests with equal decoding settings are processed together by :func:`sample_rows` (one
    processor call over their rows, as ``generate`` does for a batch); each still draws from its
    own generator."""

    def __init__(self, decoding: Decoding, seed: int | None = None) -> None:
        import torch

        self.decoding = decoding
        self.processors = logits_processors(decoding)
        self.generator: torch.Generator | None = None
        if decoding.temperature > 0:
            self.generator = torch.Generator()
            if seed is None:
                self.generator.seed()
            else:
                self.generator.manual_seed(seed)

    def __call__(self, logits: "torch.Tensor", seen: "Sequence[int] | torch.Tensor") -> int:
        """The next id from one row of last-position ``logits`` (1-D, vocab) given every id so far
        (prompt then generated ids)."""
        import torch

        if not isinstance(seen, torch.Tensor):
            seen = torch.tensor(list(seen), dtype=torch.long)
        scores = apply(self.processors, seen.to(logits.device).view(1, -1), logits.float().view(1, -1))
        if self.generator is None:
            return int(torch.argmax(scores))
        return draw(scores, [self.generator])[0]


def sample_rows(logits: "torch.Tensor", rows: "Sequence[tuple[Sampler, torch.Tensor]]") -> list[int]:
    """The next id of every row of ``logits`` (``[batch, vocab]``) for its ``(sampler, seen ids)``.

    Rows with equal settings share one pass of the processors. The repetition penalty needs the
    seen ids as one ``[n, length]`` tensor: shorter rows are padded with their own first id, which
    changes nothing (the penalty is applied once per distinct id)."""
    import torch

    out: list[int] = [0] * len(rows)
    groups: dict[Decoding, list[int]] = {}
    for i, (sampler, _) in enumerate(rows):
        groups.setdefault(sampler.decoding, []).append(i)
    for members in groups.values():
        procs = rows[members[0]][0].processors
        seen = [rows[i][1] for i in members]
        width = max(len(x) for x in seen)
        ids = torch.empty(len(seen), width, dtype=torch.long)
        for k, x in enumerate(seen):
            ids[k, width - len(x):] = x
            if len(x) < width:
                ids[k, : width - len(x)] = x[0]
        picked = logits if len(members) == logits.shape[0] else logits[members]  # members are in order
        scores = apply(procs, ids.to(logits.device), picked.float())
        if rows[members[0]][0].generator is None:
            for i, token in zip(members, scores.argmax(dim=-1).tolist()):
                out[i] = token
            continue
        for i, token in zip(members, draw(scores, [rows[i][0].generator for i in members])):
            out[i] = token
    return out


def draw(scores: "torch.Tensor", generators: "Sequence[torch.Generator]") -> list[int]:
    """One id per row of ``scores`` (logits after the processors), row ``k`` drawn with
    ``generators[k]``: inverse-CDF sampling, one uniform number per row from its own generator and
    one ``searchsorted`` for the batch (a ``torch.multinomial`` per row costs more than a tiny
    model's forward pass at 8 rows). A token with probability 0 is never drawn.

    The uniform numbers come from the requests' CPU generators and go to ``scores``' device; the
    search runs there too, so on a GPU only ``n`` numbers cross to it and ``n`` ids come back (not
    the ``[n, vocab]`` CDF: 16 MB per step for 16 rows of BLOOM's 250,880 tokens)."""
    import torch

    cdf = scores.float().softmax(dim=-1).cumsum(dim=-1)
    u = torch.cat([torch.rand(1, generator=g) for g in generators]).to(cdf.device) * cdf[:, -1]
    return torch.searchsorted(cdf, u.unsqueeze(-1), right=True).clamp(max=cdf.shape[-1] - 1).view(-1).tolist()
