"""The paper's prompt templates, byte for byte, and how templates are rendered and registered."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest

from vichat.data.templates import CHAT, DOCTOR, render_instruction, render_prompt
from vichat.data.tokenize import resolve_template
from vichat.hookspecs import hookimpl
from vichat.plugins import build_registry
from vichat.specs import SpecError, TemplateSpec
from vichat.records import VichatError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "templates.md"

CHAT_PREAMBLE = "Hãy viết một phản hồi thích hợp cho chỉ dẫn dưới đây."
DOCTOR_PREAMBLE = "Nếu bạn là bác sĩ, vui lòng trả lời các câu hỏi y tế dựa trên mô tả của bệnh nhân."


def test_chat_template_byte_for_byte():
    got = render_prompt(CHAT, "Thủ đô của Việt Nam là gì?")
    want = (
        "Hãy viết một phản hồi thích hợp cho chỉ dẫn dưới đây.\n"
        "### Instruction:\nThủ đô của Việt Nam là gì?\n### Response:\n"
    )
    assert got == want
    assert got.encode("utf-8") == want.encode("utf-8")  # same code points: no NFD look-alikes
    assert CHAT.prompt == CHAT_PREAMBLE + "\n### Instruction:\n{instruction}\n### Response:\n"


def test_doctor_template_byte_for_byte():
    got = render_prompt(DOCTOR, "Tôi bị đau đầu, tôi nên làm gì?")
    want = (
        "Nếu bạn là bác sĩ, vui lòng trả lời các câu hỏi y tế dựa trên mô tả của bệnh nhân.\n"
        "### Instruction:\nTôi bị đau đầu, tôi nên làm gì?\n### Response:\n"
    )
    assert got.encode("utf-8") == want.encode("utf-8")
    assert DOCTOR.prompt == DOCTOR_PREAMBLE + "\n### Instruction:\n{instruction}\n### Response:\n"


@pytest.mark.parametrize("template", [CHAT, DOCTOR], ids=["chat", "doctor"])
def test_templates_are_nfc_and_valid(template):
    assert unicodedata.is_normalized("NFC", template.prompt)
    template.validate()
    assert template.prompt.endswith("### Response:\n")
    assert template.input_format == "{instruction}\n\n{input}"
    assert "### Instruction:" in template.stop


def test_input_is_joined_as_a_second_paragraph():
    assert render_instruction(CHAT, "Tóm tắt đoạn văn.", "Phở là món ăn.") == "Tóm tắt đoạn văn.\n\nPhở là món ăn."
    assert render_prompt(CHAT, "Tóm tắt đoạn văn.", "Phở là món ăn.") == (
        CHAT_PREAMBLE + "\n### Instruction:\nTóm tắt đoạn văn.\n\nPhở là món ăn.\n### Response:\n"
    )
    # No input, or only whitespace: the instruction alone (no dangling blank line).
    assert render_prompt(CHAT, "Chào", "") == render_prompt(CHAT, "Chào", "  \n") == render_prompt(CHAT, "Chào")


@pytest.mark.parametrize(
    "instruction,input_text",
    [
        ("Sửa lỗi: def f(): return {'a': 1}", ""),
        ("Giải thích chuỗi {instruction} và {input} trong mẫu", ""),
        ("Đọc JSON sau", '{"instruction": "{input}", "x": {}}'),
        ("Định dạng: {0} {} {{}} %s $instruction", "{instruction}"),
    ],
)
def test_braces_in_user_text_are_left_intact(instruction, input_text):
    got = render_prompt(DOCTOR, instruction, input_text)
    body = instruction + ("\n\n" + input_text if input_text else "")
    assert got == DOCTOR_PREAMBLE + "\n### Instruction:\n" + body + "\n### Response:\n"


def test_custom_input_format():
    t = TemplateSpec(name="qa", description="Q/A.", prompt="Q: {instruction}\nA:", input_format="{input}\n---\n{instruction}")
    assert render_prompt(t, "Câu hỏi?", "Ngữ cảnh.") == "Q: Ngữ cảnh.\n---\nCâu hỏi?\nA:"


def test_invalid_templates_are_rejected():
    with pytest.raises(SpecError, match="exactly once"):
        TemplateSpec(name="bad", description="d", prompt="no placeholder").validate()
    with pytest.raises(SpecError, match="input_format"):
        TemplateSpec(name="bad", description="d", prompt="{instruction}", input_format="{instruction}").validate()


def test_builtin_plugin_registers_the_paper_templates():
    import vichat_plugins.templates as builtin

    reg = build_registry(extra=[("templates", builtin)], entry_points=False, strict=True)
    assert reg.names("templates") == ["chat", "doctor"]
    assert reg.template("chat") is CHAT and reg.template("doctor") is DOCTOR


def test_a_plugin_can_add_a_template(monkeypatch):
    from vichat import plugins

    story = TemplateSpec(
        name="story",
        description="Short stories for children.",
        prompt="Hãy kể một câu chuyện ngắn cho trẻ em.\n### Instruction:\n{instruction}\n### Response:\n",
    )

    class StoryPlugin:
        @hookimpl
        def register_templates(self, register):
            register(story)

    reg = build_registry(extra=[("story-plugin", StoryPlugin())], entry_points=False, strict=True)
    monkeypatch.setattr(plugins, "get_registry", lambda: reg)
    assert resolve_template("story", reg) is story
    assert resolve_template("chat") is CHAT  # without a registry: the paper's two, for library use
    assert render_prompt(resolve_template("story", reg), "Con mèo").endswith("Con mèo\n### Response:\n")
    with pytest.raises(VichatError, match="registry=vichat.plugins.get_registry()"):
        resolve_template("story")  # a plugin's name needs the registry it is in: never looked up behind the caller


def test_a_plugin_can_replace_the_chat_template_everywhere(monkeypatch, tmp_path):
    """`chat` goes through the registry like any template: with the built-in `templates` plugin
    blocked, a plugin's own `chat` is what `vichat data stats` (and training) render with."""
    import json

    from click.testing import CliRunner

    from vichat import plugins
    from vichat.cli import main

    terse = TemplateSpec(name="chat", description="A terse chat template.", prompt="Q: {instruction}\nA: ")

    class Terse:
        @hookimpl
        def register_templates(self, register):
            register(terse)

    monkeypatch.setenv("VICHAT_DISABLE_PLUGINS", "templates")
    reg = build_registry(extra=[("terse", Terse())], strict=True)
    assert reg.template("chat") is terse and reg.owner("templates", "chat") == "terse"
    monkeypatch.setattr(plugins, "get_registry", lambda: reg)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "Xin chào", "output": "Chào bạn"}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    runner = CliRunner()
    out = {}
    for name in ("chat", "doctor"):
        r = runner.invoke(main, ["data", "stats", str(data), "--template", name, "--json"])
        out[name] = r
    assert out["chat"].exit_code == 0, out["chat"].output
    assert out["doctor"].exit_code != 0 and "doctor" in out["doctor"].output  # blocked with the built-in plugin
    terse_tokens = json.loads(out["chat"].stdout)["total_tokens"]
    from vichat.data.stats import token_lengths
    from vichat.data.tokenizers import default_tokenizer
    from vichat.records import Record

    record = Record(id="1", instruction="Xin chào", input="", output="Chào bạn", source="t")
    assert terse_tokens == token_lengths([record], default_tokenizer(), terse)[0]
    assert terse_tokens < token_lengths([record], default_tokenizer(), CHAT)[0]


def test_docs_show_both_templates_verbatim():
    text = DOCS.read_text(encoding="utf-8")
    for template in (CHAT, DOCTOR):
        assert template.prompt in text, f"docs/templates.md must show the {template.name} template verbatim"
    assert '"{instruction}\\n\\n{input}"' in text
    assert "register_templates" in text and "-100" in text
