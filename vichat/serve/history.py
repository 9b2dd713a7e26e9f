"""Multi-turn chat in a single-turn template: earlier turns become earlier instruction/response blocks.

The paper's models were trained on one ``### Instruction:`` / ``### Response:`` pair per sample, so
a conversation is written the way such a model would have continued it. For the chat template
(``P`` = its preamble ``"Hãy viết một phản hồi thích hợp cho chỉ dẫn dưới đây.\\n"``)::

    P
    ### Instruction:
    {user 1}
    ### Response:
    {answer 1}
    ### Instruction:
    {user 2}
    ### Response:
    {answer 2}
    ### Instruction:
    {message}
    ### Response:
    <- the model continues here

Precisely: the template's prompt is split at ``{instruction}`` into ``head`` and ``tail``. When
``head`` contains one of the template's stop markers, the text before the last such marker is the
preamble, written once, and the rest (``"### Instruction:\\n"``) opens every turn; a template
without a marker repeats its whole head per turn. Each earlier turn is
``turn_head + user + tail + answer + "\\n"``; the prompt ends with ``turn_head + message + tail``,
exactly :func:`vichat.data.templates.render_prompt` for a single turn. Messages and answers are
NFC-normalised and stripped. With no history the prompt is the training prompt, byte for byte.

Too long for the context window (``prompt tokens + max_new_tokens > context``): whole turns are
dropped, oldest first; if the message alone still does not fit, it is cut from its end, the way
training cuts over-long instructions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..data.templates import render_instruction
from ..records import nfc
from ..specs import TemplateSpec
from .api import ModelError, Turn


@dataclass(frozen=True)
class TemplateParts:
    """A template split for multi-turn use (see the module docstring)."""

    preamble: str
    turn_head: str
    tail: str


def template_parts(template: TemplateSpec) -> TemplateParts:
    head, tail = template.prompt.split("{instruction}", 1)
    cut = max((head.rfind(s) for s in template.stop if s), default=-1)
    if cut < 0:
        return TemplateParts("", head, tail)
    return TemplateParts(head[:cut], head[cut:], tail)


def stop_markers(template: TemplateSpec, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """Where an answer ends: the template's stop markers (``"### Instruction:"``), its response
    marker (``"### Response:"``: a model that writes one has started a dialogue of its own) and
    ``extra``, without duplicates."""
    marker = template_parts(template).tail.strip()
    out: list[str] = []
    for s in (*template.stop, marker, *extra):
        if s and s not in out:
            out.append(s)
    return tuple(out)


def _turn(parts: TemplateParts, template: TemplateSpec, user: str) -> str:
    # render_instruction: no str.format, so braces in user text stay as typed.
    return parts.turn_head + render_instruction(template, nfc(user).strip()) + parts.tail


def fold_history(template: TemplateSpec, message: str, history: Sequence[Turn] = ()) -> str:
    """The prompt for ``message`` after the earlier ``history`` turns (format in the module docstring)."""
    parts = template_parts(template)
    out = [parts.preamble]
    for user, answer in history:
        out.append(_turn(parts, template, user) + nfc(answer or "").strip() + "\n")
    out.append(_turn(parts, template, message))
    return "".join(out)


@dataclass(frozen=True)
class FittedPrompt:
    """The ids the model is fed, and what had to go to fit the context window."""

    ids: list[int]
    text: str
    turns_dropped: int
    message_cut: bool


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
    blocks = [_turn(parts, template, user) + nfc(answer or "").strip() + "\n" for user, answer in history]
    room = budget - len(prefix) - len(encode(parts.preamble + _turn(parts, template, message)))
    dropped = len(history)
    for k in range(len(blocks) - 1, -1, -1):
        room -= len(encode(blocks[k]))
        if room < 0:
            break
        dropped = k

    def attempt(n: int) -> tuple[list[int], str] | None:
        text = parts.preamble + "".join(blocks[n:]) + _turn(parts, template, message)
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
    return FittedPrompt(best[0], best[1], len(history), True)


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
