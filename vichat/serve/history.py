"""Multi-turn chat in a single-turn template, fitted to the model's context window.

How a conversation is folded into the template is :func:`vichat.data.templates.fold_history` (the
data stage owns the templates; serving, evaluation and the tiny model's evaluation all use it).

Too long for the context window (``prompt tokens + max_new_tokens > context``): whole turns are
dropped, oldest first; if the message alone still does not fit, it is cut from its end, the way
training cuts over-long instructions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..data.templates import TemplateParts, turn_text, fold_history, stop_markers, template_parts
from ..records import nfc
from ..specs import TemplateSpec
from .api import ModelError, Turn

__all__ = ["FittedPrompt", "TemplateParts", "context_window", "fit_prompt", "fold_history", "stop_markers",
           "template_parts"]


@dataclass(frozen=True)
class FittedPrompt:
    """The ids the model is fed, and what had to go to fit the context window."""

    ids: list[int]
    text: str
    turns_dropped: int
    message_cut: bool
    message_kept: int | None = None  # when cut: how many of the message's characters were sent


def fit_prompt(
    encode: Callable[[str], list[int]],
    template: TemplateSpec,
    message: str,
    history: Sequence[Turn],
    *,
    context: int,
    max_new_tokens: int,
    prefix: Sequence[int] = (),
) -> FittedPrompt:
    """Fold ``history`` and ``message`` into ids that leave room for ``max_new_tokens``.

    :param encode: text to ids, the way training encoded prompts (no special tokens added).
    :param context: the model's context window in tokens.
    :param prefix: ids put before the prompt (BOS, for tokenizers that add one).
    :raises ModelError: when even the bare template does not fit.
    """
    budget = context - max_new_tokens
    history = list(history)
    parts = template_parts(template)
    # One pass: each earlier turn is encoded once on its own, and the number of oldest turns to
    # drop is read off the running sum (re-encoding the whole prompt per dropped turn made a long
    # client-sent history cost turns x size). Token counts of pieces need not add up exactly to
    # the count of their concatenation, so the choice is then checked on the real prompt and
    # moved by a turn at a time until it is the smallest drop that fits.
    blocks = [turn_text(parts, template, user) + nfc(answer or "").strip() + "\n" for user, answer in history]
    room = budget - len(prefix) - len(encode(parts.preamble + turn_text(parts, template, message)))
    dropped = len(history)
    for k in range(len(blocks) - 1, -1, -1):
        room -= len(encode(blocks[k]))
        if room < 0:
            break
        dropped = k

    def attempt(n: int) -> tuple[list[int], str] | None:
        text = parts.preamble + "".join(blocks[n:]) + turn_text(parts, template, message)
        ids = list(prefix) + encode(text)
        return (ids, text) if len(ids) <= budget else None

    fitted = attempt(dropped)
    while fitted is None and dropped < len(history):
        dropped += 1
        fitted = attempt(dropped)
    if fitted is not None:
        while dropped > 0:
            better = attempt(dropped - 1)
            if better is None:
                break
            dropped, fitted = dropped - 1, better
        return FittedPrompt(fitted[0], fitted[1], dropped, False)
    # Only the message is left and it is too long: keep its longest prefix that fits.
    bare = list(prefix) + encode(fold_history(template, ""))
    if len(bare) > budget:
        raise ModelError(
            f"the prompt template alone takes {len(bare)} tokens, more than the {budget} left in the "
            f"{context}-token context after reserving {max_new_tokens} for the answer: lower max_new_tokens"
        )
    body = nfc(message).strip()
    lo, hi, best = 0, len(body), (bare, fold_history(template, ""))
    while hi - lo > 1:  # invariant: body[:lo] fits, body[:hi] does not
        mid = (lo + hi) // 2
        text = fold_history(template, body[:mid])
        ids = list(prefix) + encode(text)
        if len(ids) <= budget:
            lo, best = mid, (ids, text)
        else:
            hi = mid
    return FittedPrompt(best[0], best[1], len(history), True, lo)


def context_window(model: Any, tokenizer: Any, fallback: int = 2048) -> int:
    """The longest sequence the model takes: its config's position limit, else the tokenizer's
    ``model_max_length`` when that is a real number, else ``fallback`` (BLOOM's ALiBi has no limit;
    2048 is what it was trained with)."""
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 1_000_000:
        return value
    return fallback
