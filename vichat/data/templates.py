"""Prompt templates: data (``TemplateSpec``), rendered without ``str.format`` so braces in user
text (code, JSON) are never interpreted.

How a record's ``input`` is joined: when it is non-empty, the text put in place of
``{instruction}`` is ``template.input_format`` with both fields filled in; the paper's templates use
``"{instruction}\\n\\n{input}"`` (the input as a second paragraph of the instruction).

Multi-turn chat in a single-turn template (:func:`fold_history`): earlier turns become earlier
instruction/response blocks. The paper's models were trained on one ``### Instruction:`` /
``### Response:`` pair per sample, so a conversation is written the way such a model would have
continued it. For the chat template
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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from ..records import nfc
from ..specs import TemplateSpec

#: One earlier exchange of a conversation: ``(user message, model answer)``.
Turn = tuple[str, str]

CHAT = TemplateSpec(
    name="chat",
    description="The paper's general chat template (Bloomz-Chat, GPTJ-Chat).",
    prompt="Hãy viết một phản hồi thích hợp cho chỉ dẫn dưới đây.\n### Instruction:\n{instruction}\n### Response:\n",
)

DOCTOR = TemplateSpec(
    name="doctor",
    description="The paper's medical template (Bloomz-Doctor, GPTJ-Doctor).",
    prompt=(
        "Nếu bạn là bác sĩ, vui lòng trả lời các câu hỏi y tế dựa trên mô tả của bệnh nhân.\n"
        "### Instruction:\n{instruction}\n### Response:\n"
    ),
)

_FIELD = re.compile(r"\{(instruction|input)\}")


def _fill(pattern: str, values: dict[str, str]) -> str:
    return _FIELD.sub(lambda m: values[m.group(1)], pattern)


def render_instruction(template: TemplateSpec, instruction: str, input: str = "") -> str:
    """The text that stands for ``{instruction}``: the instruction, joined with ``input`` if any."""
    if input and input.strip():
        return _fill(template.input_format, {"instruction": instruction, "input": input})
    return instruction


def render_prompt(template: TemplateSpec, instruction: str, input: str = "") -> str:
    """The full prompt, ending where the model's response begins."""
    return _fill(template.prompt, {"instruction": render_instruction(template, instruction, input), "input": ""})


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


def turn_text(parts: TemplateParts, template: TemplateSpec, user: str) -> str:
    """One turn's opening: ``turn_head + user + tail`` (the model's answer follows it)."""
    # render_instruction: no str.format, so braces in user text stay as typed.
    return parts.turn_head + render_instruction(template, nfc(user).strip()) + parts.tail


def fold_history(template: TemplateSpec, message: str, history: Sequence[Turn] = ()) -> str:
    """The prompt for ``message`` after the earlier ``history`` turns (format in the module docstring)."""
    parts = template_parts(template)
    out = [parts.preamble]
    for user, answer in history:
        out.append(turn_text(parts, template, user) + nfc(answer or "").strip() + "\n")
    out.append(turn_text(parts, template, message))
    return "".join(out)
