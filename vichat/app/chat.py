"""The Chat tab: pick a model and a template, chat over several turns with streamed answers.

Endpoints (``api_name``, for gradio_client): ``chat`` (message, history, model, template and the
five decoding values -> history, cleared textbox), ``regenerate``, ``stop``, ``clear``.
"""

from __future__ import annotations

from typing import Any, Iterator

import gradio as gr

from ..records import VichatError
from ..serve.api import Turn
from ..specs import Decoding
from .context import AppContext
from .controls import clamp_decoding, decoding_sliders, decoding_values, refuse_bad_values
from .generation import STOPS, stream_answer
from .messages import Message, last_user_message, to_messages, to_turns
from .safety import LimitError, check_conversation, refuse, visitor_error


CHAT_EXAMPLES = [
    ["Hãy giới thiệu ngắn gọn về Vịnh Hạ Long.", "chat"],
    ["Viết một bài thơ lục bát ngắn về mùa thu Hà Nội.", "chat"],
    ["Làm thế nào để học tiếng Anh hiệu quả khi đi làm bận rộn?", "chat"],
    ["Giải thích sự khác nhau giữa lãi đơn và lãi kép, kèm một ví dụ.", "chat"],
]
DOCTOR_EXAMPLES = [
    ["Tôi bị ho khan và đau họng ba ngày nay, tôi nên làm gì?", "doctor"],
    ["Con tôi 2 tuổi bị sốt 38,5 độ, khi nào cần đưa bé đi khám?", "doctor"],
    ["Tôi hay bị đau đầu vào buổi chiều, nguyên nhân có thể là gì?", "doctor"],
]

ChatUpdate = tuple[list[Message], str]


class ChatHandlers:
    """The tab's event handlers; plain methods so tests can call them without a browser."""

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx

    def _model(self, name: str | None) -> str:
        if not self.ctx.models:
            raise LimitError("Chưa có mô hình nào được cấu hình cho bản demo này.")
        if not name:
            return self.ctx.models[0].name
        if self.ctx.model(name) is None:
            raise LimitError(f"Không có mô hình {name!r}. Hãy chọn một mô hình trong danh sách.")
        return name

    def chat(self, message: str, history: list[Any], model: str, template: str, max_new_tokens: float,
             temperature: float, top_k: float, top_p: float, repetition_penalty: float,
             request: gr.Request = None) -> Iterator[ChatUpdate]:
        """Append ``message`` and stream the answer."""
        decoding = (max_new_tokens, temperature, top_k, top_p, repetition_penalty)
        try:
            turns = to_turns(history)
            text = self._check(message, turns)
            model = self._model(model)
            session = self._rate(request)
        except VichatError as exc:
            raise refuse(exc, "chat") from None
        yield from self._stream(session, turns, text, model, template, clamp_decoding(*decoding), restore=message)

    def regenerate(self, history: list[Any], model: str, template: str, max_new_tokens: float,
                   temperature: float, top_k: float, top_p: float, repetition_penalty: float,
                   request: gr.Request = None) -> Iterator[ChatUpdate]:
        """Answer the last message again (with the current model and settings)."""
        decoding = (max_new_tokens, temperature, top_k, top_p, repetition_penalty)
        try:
            turns, last = last_user_message(history)
            if last is None:
                raise LimitError("Chưa có câu hỏi nào để tạo lại câu trả lời.")
            last = self._check(last, turns)
            model = self._model(model)
            session = self._rate(request)
        except VichatError as exc:
            raise refuse(exc, "regenerate") from None
        yield from self._stream(session, turns, last, model, template, clamp_decoding(*decoding), restore="")

    def _check(self, message: str | None, turns: list[Turn]) -> str:
        s = self.ctx.settings
        return check_conversation(message, turns, max_chars=s.max_input_chars, max_turns=s.max_turns,
                                  max_answer_chars=s.max_answer_chars, max_history_chars=s.max_history_chars)

    def _rate(self, request: Any) -> str:
        """Count one message for the visitor; their session id."""
        visitor = self.ctx.visitor(request)
        self.ctx.limit("message", visitor)
        return visitor.session

    def _stream(self, session: str, turns: list[Turn], text: str, model: str, template: str | None,
                decoding: Decoding, restore: str) -> Iterator[ChatUpdate]:
        key = f"{session}:chat"
        stop = STOPS.start(key)
        template = template if template in self.ctx.templates else None
        yield to_messages(turns, text, ""), ""
        try:
            for answer in stream_answer(model, text, turns, template, decoding, key):
                yield to_messages(turns, text, answer), ""
        except Exception as exc:  # noqa: BLE001 - shown in the page; the app stays up
            # Drop the failed exchange and give the message back, so one click retries it.
            yield to_messages(turns), restore
            error = visitor_error(exc, self.ctx.settings.error_detail, f"chat with {model}")
            raise gr.Error(f"Mô hình {model} gặp lỗi: {error}") from None
        finally:
            STOPS.finish(key, stop)

    def stop(self, request: gr.Request = None) -> None:
        try:
            STOPS.stop(f"{self.ctx.session(request)}:chat")
        except VichatError:
            pass  # no session could be issued: nothing of this visitor is running

    def clear(self, request: gr.Request = None) -> ChatUpdate:
        self.stop(request)
        return [], ""

    def on_model(self, name: str) -> list[Any]:
        """A model's template and decoding defaults, and its description."""
        info = self.ctx.model(name)
        if info is None:
            return [gr.update(), *[gr.update() for _ in decoding_values(Decoding())], ""]
        templates = self.ctx.templates
        template = info.template if info.template in templates else templates[0]
        about = f"**{info.name}**" + (f": {info.description}" if info.description else "")
        return [template, *decoding_values(info.decoding), about]


def build_chat_tab(ctx: AppContext) -> ChatHandlers:
    """Lay out the tab inside the caller's ``gr.Tab`` and wire its events."""
    h = ChatHandlers(ctx)
    first = ctx.models[0] if ctx.models else None
    limit = dict(concurrency_limit=ctx.settings.generation_concurrency, concurrency_id="generate")
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(label="Trò chuyện", height=460, elem_id="chat-history",
                                 buttons=["copy", "copy_all"], feedback_options=None)
            with gr.Row():
                box = gr.Textbox(label="Tin nhắn", placeholder="Nhập câu hỏi bằng tiếng Việt rồi nhấn Enter…", show_label=False,
                                 scale=5, max_lines=8, elem_id="chat-input",
                                 max_length=ctx.settings.max_input_chars)
                send = gr.Button("Gửi", variant="primary", scale=1, elem_id="chat-send")
            with gr.Row():
                stop = gr.Button("⏹ Dừng", elem_id="chat-stop")
                regen = gr.Button("🔄 Tạo lại", elem_id="chat-regenerate")
                clear = gr.Button("🗑 Xóa", elem_id="chat-clear")
        with gr.Column(scale=1, min_width=260):
            model = gr.Dropdown(ctx.model_names, value=first.name if first else None, label="Mô hình",
                                elem_id="chat-model")
            about = gr.Markdown(f"**{first.name}**: {first.description}" if first and first.description else "")
            templates = ctx.templates
            template = gr.Radio(templates, value=(first.template if first and first.template in templates
                                                  else templates[0]),
                                label="Mẫu lời nhắc (template)", info="chat: trợ lý chung; doctor: hỏi đáp y tế")
            with gr.Accordion("Tham số sinh văn bản", open=False):
                sliders = decoding_sliders(gr, first.decoding if first else None)
    gr.Examples(CHAT_EXAMPLES, inputs=[box, template], label="Ví dụ trò chuyện (template chat)",
                cache_examples=False)
    gr.Examples(DOCTOR_EXAMPLES, inputs=[box, template], label="Ví dụ hỏi bác sĩ (template doctor)",
                cache_examples=False)

    settings_inputs = [model, template, *sliders]
    refuse_bad_values(settings_inputs, "chat")  # an unknown model or an out-of-range value: one log line
    sent = gr.on([box.submit, send.click], h.chat, [box, chatbot, *settings_inputs], [chatbot, box],
                 api_name="chat", **limit)
    regenerated = regen.click(h.regenerate, [chatbot, *settings_inputs], [chatbot, box], api_name="regenerate",
                              **limit)
    stop.click(h.stop, None, None, cancels=[sent, regenerated], api_name="stop", queue=False)
    clear.click(h.clear, None, [chatbot, box], cancels=[sent, regenerated], api_name="clear", queue=False)
    model.change(h.on_model, [model], [template, *sliders, about], api_name="chat_model",
                 queue=False)
    return h
