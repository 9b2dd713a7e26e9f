"""Between Gradio's chat messages and the backend's turns.

Gradio 6's Chatbot speaks only the "messages" format, and what a handler receives may carry
``content`` as a list of blocks (``[{"type": "text", "text": ...}]``) rather than a string; the
backend wants ``(user, answer)`` pairs. Handlers always send back plain-string messages.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from ..serve.api import Turn
from .render import safe_markdown
from .safety import secret_values

Message = dict[str, Any]


def content_text(content: Any) -> str:
    """The text of a message's ``content``: a string, a text block, or a list of either."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        if content.get("type", "text") == "text" and isinstance(content.get("text"), str):
            return content["text"]
        return ""  # files and components carry no text for the model
    if isinstance(content, (list, tuple)):
        return "".join(content_text(c) for c in content)
    return str(content)


def _role_and_text(message: Any) -> tuple[Any, str]:
    role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
    content = message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
    return role, content_text(content)


def _joined(texts: list[str]) -> str:
    """Consecutive user messages as one: a newline between those with text."""
    return "\n".join(t for t in texts if t)


def to_turns(history: Sequence[Any] | None) -> list[Turn]:
    """``(user, answer)`` pairs from chat messages. Consecutive user messages (a visitor who sent
    two before an answer, or a client-built history) are one turn, joined by a newline: none of
    them is lost. User messages left without an answer at the end (a failed or stopped generation)
    are dropped, so they never shift later pairs."""
    turns: list[Turn] = []
    pending: list[str] = []
    for message in history or ():
        role, text = _role_and_text(message)
        if role == "user":
            pending.append(text)
        elif role == "assistant" and pending:
            turns.append((_joined(pending), text))
            pending = []
    return turns


def to_messages(turns: Iterable[Turn], user: str | None = None, answer: str | None = None) -> list[Message]:
    """Chat messages for ``turns``, then optionally a new ``user`` message and its ``answer`` so far,
    as the page shows them: configured secrets masked and HTML made safe (:func:`shown`)."""
    show = shown_text()
    out: list[Message] = []
    for question, reply in turns:
        out += [{"role": "user", "content": show(question)}, {"role": "assistant", "content": show(reply)}]
    if user is not None:
        out.append({"role": "user", "content": show(user)})
        if answer is not None:
            out.append({"role": "assistant", "content": show(answer)})
    return out


def shown_text():  # noqa: ANN201 - returns a str -> str function
    """A function making text fit to show: secrets masked (one look at the environment per call of
    this function, not per message), then :func:`vichat.app.render.safe_markdown`."""
    secrets = secret_values()

    def show(text: str | None) -> str:
        text = text or ""
        for value in secrets:
            text = text.replace(value, "***")
        return safe_markdown(text)

    return show


def last_user_message(history: Sequence[Any] | None) -> tuple[list[Turn], str | None]:
    """The turns before the last user message, and that message (for Regenerate); user messages
    right before it are part of it, joined by a newline, as :func:`to_turns` joins them."""
    messages = list(history or ())
    for k in range(len(messages) - 1, -1, -1):
        role, text = _role_and_text(messages[k])
        if role == "user":
            start, texts = k, [text]
            while start > 0 and _role_and_text(messages[start - 1])[0] == "user":
                start -= 1
                texts.insert(0, _role_and_text(messages[start])[1])
            return to_turns(messages[:start]), _joined(texts)
    return to_turns(messages), None
