"""What a model wrote, made safe to render as Markdown in the page.

Gradio's Chatbot sanitises HTML in the browser: scripts and event handlers never run. Two things
pass it: forms and buttons (a ``<form><button>`` in an answer reloads the page when clicked, and
the chat is lost) and images with an outside ``src`` (an answer can make every reader's browser
fetch a URL). So the text is cleaned on the server first, keeping what an answer legitimately
uses:

- fenced and indented-by-fence code blocks and inline code are left byte for byte (Markdown shows
  them literally, tags included);
- math (``$$…$$``, ``$…$``, ``\\(…\\)``, ``\\[…\\]``) is kept; a ``<`` directly followed by a letter
  gets a space after it (``a<b`` -> ``a< b``: the same formula, no longer a tag);
- elsewhere, tags of a small formatting allowlist (``b``, ``i``, ``em``, ``sub``, ``br``, tables,
  lists, ...) are kept without their attributes; any other tag is escaped, so it shows as text;
- Markdown images become links (``![x](url)`` -> ``[🖼 x](url)``): nothing loads by itself.

The answer stored with a vote is the model's text, not this rendering.
"""

from __future__ import annotations

import html
import re

#: Formatting tags an answer may use; rendered without attributes.
ALLOWED_TAGS = frozenset(
    "b i em strong u s del ins sub sup br hr p code pre kbd mark small span div blockquote "
    "ul ol li dl dt dd table thead tbody tfoot tr th td caption h1 h2 h3 h4 h5 h6 details summary".split()
)

# Segments left alone (code) or handled as math; order matters: fences before inline code.
_SEGMENT = re.compile(
    r"(?P<fence>^[ \t]*(?P<f>`{3,}|~{3,})[^\n]*\n.*?(?:^[ \t]*(?P=f)[ \t]*$|\Z))"
    r"|(?P<code>(?P<ticks>`+)(?!`).+?(?<!`)(?P=ticks)(?!`))"
    r"|(?P<math>\$\$.+?\$\$|\\\[.+?\\\]|\\\(.+?\\\)|(?<![\\$\w])\$(?![\s$])[^$\n]+?(?<![\s\\])\$(?![\w$]))",
    re.DOTALL | re.MULTILINE,
)
_TAG = re.compile(r"<(/?)([A-Za-z][A-Za-z0-9-]*)((?:[^<>\"']|\"[^\"]*\"|'[^']*')*)(/?)>")
_OPEN_TAG = re.compile(r"<(?=[A-Za-z/!?])")
_IMAGE = re.compile(r"!\[")
_MATH_LT = re.compile(r"<(?=[A-Za-z/!?])")


def _clean_text(text: str) -> str:
    """Outside code and math: keep allowlisted tags bare, escape every other tag-like ``<``."""
    out: list[str] = []
    pos = 0
    for m in _TAG.finditer(text):
        out.append(_OPEN_TAG.sub("&lt;", text[pos:m.start()]))
        closing, name, _, selfclose = m.groups()
        if name.lower() in ALLOWED_TAGS:
            out.append(f"<{closing}{name.lower()}{selfclose}>")
        else:
            out.append(html.escape(m.group(0), quote=False))
        pos = m.end()
    out.append(_OPEN_TAG.sub("&lt;", text[pos:]))
    return _IMAGE.sub("[🖼 ", "".join(out))


def safe_markdown(text: str | None) -> str:
    """``text`` with forms, buttons, outside images and any other non-formatting HTML neutralised
    (see the module docstring); code blocks, inline code and math unchanged."""
    if not text:
        return text or ""
    if "<" not in text and "![" not in text:
        return text  # the common case: nothing to do
    out: list[str] = []
    pos = 0
    for m in _SEGMENT.finditer(text):
        out.append(_clean_text(text[pos:m.start()]))
        if m.group("math"):
            out.append(_MATH_LT.sub("< ", m.group(0)))
        else:
            out.append(m.group(0))
        pos = m.end()
    out.append(_clean_text(text[pos:]))
    return "".join(out)
