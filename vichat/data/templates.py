"""Prompt templates: data (``TemplateSpec``), rendered without ``str.format`` so braces in user
text (code, JSON) are never interpreted.

How a record's ``input`` is joined: when it is non-empty, the text put in place of
``{instruction}`` is ``template.input_format`` with both fields filled in; the paper's templates use
``"{instruction}\\n\\n{input}"`` (the input as a second paragraph of the instruction).
"""

from __future__ import annotations

import re

from ..specs import TemplateSpec

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
