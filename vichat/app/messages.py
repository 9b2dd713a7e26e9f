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


def to_turns(history: Sequence[Any] | None) -> list[Turn]:
    """``(user, answer)`` pairs from chat messages. A user message left without an answer (a
    failed or stopped generation) is dropped, so it never shifts later pairs."""
    turns: list[Turn] = []
    pending: str | None = None
    for message in history or ():
        role = message.get("role") if isinstance(message, dict) else getattr(message, "role", None)
        content = message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
        text = content_text(content)
        if role == "user":
            pending = text
        elif role == "assistant" and pending is not None:
            turns.append((pending, text))
            pending = None
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
    """The turns before the last user message, and that message (for Regenerate)."""
    messages = list(history or ())
    for k in range(len(messages) - 1, -1, -1):
        m = messages[k]
        role = m.get("role") if isinstance(m, dict) else getattr(m, "role", None)
        if role == "user":
            content = m.get("content") if isinstance(m, dict) else getattr(m, "content", None)
            return to_turns(messages[:k]), content_text(content)
    return to_turns(messages), None
