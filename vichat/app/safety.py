"""Limits a public demo needs: input and history size, turns, one-line refusals, and keeping secrets out of
everything the page shows or the log records.

Messages raised here are for visitors, so they are in Vietnamese; they say what the limit is.
"""

from __future__ import annotations

import logging
import os
import re
import traceback
import unicodedata
from typing import Sequence

from ..records import VichatError, nfc

log = logging.getLogger("vichat.app")

#: Environment variables whose values must never be shown: names that look like credentials.
_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|SALT|CREDENTIAL)", re.IGNORECASE)
_MIN_SECRET_LEN = 6  # shorter values ("1", "true") are settings, and masking them would garble text


class LimitError(VichatError):
    """A visitor went over a limit; the message is shown in the page as is."""


#: Characters that show nothing although they are not whitespace to ``str.strip``: fillers and the
#: combining grapheme joiner (categories Cf, Cc, Z*, Mn and Me are invisible on their own too).
_INVISIBLE_CHARS = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180e\u2800\u3164\uffa0")
_INVISIBLE_CATEGORIES = ("Cf", "Cc", "Cs", "Zs", "Zl", "Zp", "Mn", "Me")


def is_blank(text: str) -> bool:
    """Whether ``text`` shows nothing: empty, or only whitespace, zero-width and format characters
    (zero-width space and joiners, BOM, word joiner, bidi marks), fillers, or lone combining marks."""
    return all(c in _INVISIBLE_CHARS or unicodedata.category(c) in _INVISIBLE_CATEGORIES for c in text)


def check_message(text: str | None, max_chars: int) -> str:
    """The message, NFC-normalised and stripped; :class:`LimitError` if empty (nothing visible:
    see :func:`is_blank`) or too long."""
    text = nfc(text or "").strip()
    if is_blank(text):
        raise LimitError("Hãy nhập một câu hỏi (tin nhắn đang trống).")
    if len(text) > max_chars:
        raise LimitError(f"Tin nhắn quá dài: {len(text)} ký tự, tối đa {max_chars}. Hãy rút gọn rồi gửi lại.")
    return text


def check_conversation(message: str | None, turns: Sequence[tuple[str, str]], *, max_chars: int, max_turns: int,
                       max_answer_chars: int, max_history_chars: int) -> str:
    """The one input check of every endpoint that takes text or history, run before anything is
    tokenised: the message (:func:`check_message`), the number of turns, each earlier message and
    answer, and the history's total size. Returns the normalised message.

    A client can send any history it likes (``/chat`` and ``/regenerate`` take it as input), so
    nothing of it is trusted to be what this server once produced."""
    check_turns(len(turns), max_turns)
    total = 0
    for k, (question, answer) in enumerate(turns, 1):
        if len(question or "") > max_chars:
            raise LimitError(f"Lượt {k} của cuộc trò chuyện quá dài: {len(question)} ký tự, tối đa {max_chars}. "
                             "Bấm “Xóa” để bắt đầu lại.")
        if len(answer or "") > max_answer_chars:
            raise LimitError(f"Câu trả lời ở lượt {k} quá dài: {len(answer)} ký tự, tối đa {max_answer_chars}. "
                             "Bấm “Xóa” để bắt đầu lại.")
        total += len(question or "") + len(answer or "")
    if total > max_history_chars:
        raise LimitError(f"Cuộc trò chuyện quá dài: {total} ký tự, tối đa {max_history_chars}. "
                         "Bấm “Xóa” để bắt đầu lại.")
    return check_message(message, max_chars)


def refuse(exc: BaseException | str, what: str = "request") -> Exception:
    """A ``gr.Error`` for a refusal the visitor caused (a limit, a bad input): the page shows the
    message; the log gets one line, not a traceback (refusals come by the thousand under abuse)."""
    import gradio as gr

    message = scrub(str(exc))
    # A refusal tied to a client address (too many new sessions) names it as the app stores it:
    # a prefix of its salted hash, never the address itself.
    address = getattr(exc, "address", "") if isinstance(exc, BaseException) else ""
    where = f" (address {address[:12]})" if address else ""
    log.info("refused %s%s: %s", what, where, message[:200])
    return gr.Error(message, print_exception=False)


def check_turns(turns_so_far: int, max_turns: int) -> None:
    """:class:`LimitError` when one more turn would exceed ``max_turns``."""
    if turns_so_far + 1 > max_turns:
        raise LimitError(
            f"Cuộc trò chuyện đã đủ {max_turns} lượt, giới hạn của bản demo. Bấm “Xóa” (hoặc “Trận mới”) để bắt đầu lại."
        )


def secret_values(environ: dict[str, str] | None = None) -> list[str]:
    """Values of credential-like environment variables, longest first (so masking is complete)."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= _MIN_SECRET_LEN}
    return sorted(values, key=len, reverse=True)


def scrub(text: str, environ: dict[str, str] | None = None) -> str:
    """``text`` with every credential-like environment value replaced by ``***``."""
    for value in secret_values(environ):
        text = text.replace(value, "***")
    return text


#: What a visitor reads instead of a failure's details when the app hides them (``error_detail`` off).
HIDDEN_DETAIL = "lỗi phía máy chủ; chi tiết đã được ghi vào nhật ký"


def visitor_error(exc: BaseException, detail: bool, what: str) -> str:
    """What a visitor reads about ``exc``: :func:`describe_error` when ``detail``, else
    :data:`HIDDEN_DETAIL`, the description going to the log as one line naming ``what`` failed."""
    message = describe_error(exc)
    if detail:
        return message
    log.warning("%s failed: %s", what, message)
    return HIDDEN_DETAIL


def describe_error(exc: BaseException, limit: int = 400) -> str:
    """A message for the page: a :class:`VichatError`'s own words, else the exception's type and
    message; secrets masked, length bounded. The scrubbed traceback goes to the log."""
    if isinstance(exc, VichatError):
        msg = str(exc)
    else:
        msg = f"{type(exc).__name__}: {exc}"
        log.warning("unexpected error: %s", scrub("".join(traceback.format_exception(exc))))
    msg = scrub(msg)
    return msg if len(msg) <= limit else msg[: limit - 1] + "…"
