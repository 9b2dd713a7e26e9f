"""A canned :class:`~vichat.serve.api.ChatBackend` for tests, UI work and ``vichat serve --fake``.

It streams fixed Vietnamese answers word by word with a small delay, so streaming, stop, the
arena's simultaneous sides and the load test behave as with a real model, without one. Answers
never name the model (a blind battle between canned models must stay blind): each model has its
own way of opening an answer (:data:`STYLES`, by its place in the list of models), so the two
sides of a battle differ without saying who is who.
"""

from __future__ import annotations

import threading
import time
from typing import Iterator, Sequence

from ..serve.api import ModelError, ModelInfo, Turn
from ..specs import Decoding

GENERAL = (
    "Xin chào! Tôi là trợ lý tiếng Việt. Về câu hỏi của bạn, câu trả lời ngắn gọn là: hãy bắt đầu từ "
    "những điều cơ bản, luyện tập đều đặn mỗi ngày và đừng ngại hỏi khi chưa hiểu."
)
MEDICAL = (
    "Chào bạn, với các triệu chứng bạn mô tả, bạn nên nghỉ ngơi, uống đủ nước và theo dõi nhiệt độ. "
    "Nếu sốt cao kéo dài hơn hai ngày, hãy đến cơ sở y tế gần nhất để được bác sĩ khám."
)

#: How each model opens an answer (model k of the list takes style k, cyclically): anonymous but
#: deterministic, so the sides of a battle can be told apart and tests know what to expect.
STYLES = ("", "Vâng. ", "Được thôi. ", "Câu hỏi hay! ", "Rất vui được giúp bạn. ", "Tôi hiểu rồi. ")

DEFAULT_MODELS = (
    ModelInfo("bloomz-chat", "Bloomz-7b1-mt + LoRA, dữ liệu hội thoại (bản giả lập)", "chat"),
    ModelInfo("bloomz-doctor", "Bloomz-7b1-mt + LoRA, dữ liệu y tế (bản giả lập)", "doctor"),
    ModelInfo("gptj-chat", "GPT-J-6B (VietAI) + LoRA, dữ liệu hội thoại (bản giả lập)", "chat"),
    ModelInfo("gptj-doctor", "GPT-J-6B (VietAI) + LoRA, dữ liệu y tế (bản giả lập)", "doctor"),
)


class CannedBackend:
    """Streams a canned answer per template. ``failing`` names models that raise :class:`ModelError`
    after ``fail_after`` words, as does any model for a message containing ``fail_trigger`` (to
    test error handling); ``delay_s`` is the pause per word."""

    def __init__(
        self,
        models: Sequence[ModelInfo] = DEFAULT_MODELS,
        *,
        delay_s: float = 0.02,
        failing: Sequence[str] = (),
        fail_after: int = 2,
        max_words: int | None = None,
        fail_trigger: str | None = None,
    ) -> None:
        self._models = list(models)
        self.delay_s = delay_s
        self.failing = set(failing)
        self.fail_after = fail_after
        self.max_words = max_words
        self.fail_trigger = fail_trigger
        self.calls: list[dict] = []  # what each stream() received, for assertions
        self._lock = threading.Lock()

    def models(self) -> list[ModelInfo]:
        return list(self._models)

    def answer(self, model: str, turn: int = 1, template: str | None = None) -> str:
        """The whole canned answer of ``model`` at conversation turn ``turn`` (1: no history) with
        ``template`` (default: the model's own): its style's opening, "(lượt N)" after the first
        turn, then the template's text. It never contains the model's name."""
        index = next((k for k, m in enumerate(self._models) if m.name == model), 0)
        template = template or (self._models[index].template if self._models else None)
        body = MEDICAL if template == "doctor" else GENERAL
        marker = f"(lượt {turn}) " if turn > 1 else ""
        return STYLES[index % len(STYLES)] + marker + body

    def stream(
        self,
        model: str,
        message: str,
        history: Sequence[Turn] = (),
        *,
        template: str | None = None,
        decoding: Decoding | None = None,
        cancel: threading.Event | None = None,
    ) -> Iterator[str]:
        info = next((m for m in self._models if m.name == model), None)
        if info is None:
            raise ModelError(f"unknown model {model!r}; available: {', '.join(m.name for m in self._models)}")
        template = template or info.template
        decoding = decoding or info.decoding
        with self._lock:
            self.calls.append({"model": model, "message": message, "history": list(history),
                               "template": template, "decoding": decoding})
        words = self.answer(model, len(history) + 1, template).split(" ")
        limit = min(len(words), decoding.max_new_tokens, self.max_words or len(words))
        for k, word in enumerate(words[:limit]):
            if cancel is not None and cancel.is_set():
                return
            failing = model in self.failing or (self.fail_trigger is not None and self.fail_trigger in message)
            if failing and k == self.fail_after:
                raise ModelError(f"model {model!r} failed while generating (simulated)")
            if self.delay_s:
                time.sleep(self.delay_s)
            yield word if k == 0 else " " + word
