"""Protect what must not be translated: code, URLs, e-mail addresses, numbers, placeholders.

Each protected span is replaced by an opaque marker ``⟦N⟧`` (U+27E6, a number, U+27E7) before the
text is sent, and put back after. Why this shape:

- Google's v2 API with ``format=text`` and chat models both copy rare mathematical brackets around
  digits unchanged: there is no word in them to translate, no HTML to reinterpret, and unlike
  ``{0}``/``__0__``/``<x id=0/>`` nothing a translator or model treats as markup or as English.
- It is short (Google bills per character) and cannot occur in ordinary text. A ``⟦`` or ``⟧``
  that *is* in the source is itself protected, so any bracket left after restoring means damage.
- Restoring is strict: every marker sent must come back exactly once, no other marker may
  appear, and no stray bracket may remain. Otherwise :class:`ProtectionError` is raised and the
  segment is marked failed, never silently corrupted. Spaces a translator puts inside a marker
  (``⟦ 3 ⟧``) are tolerated because they cannot change which span it stands for.

Google Translate once turned Alpaca's Python into Vietnamese (``print(`` became ``in (``,
``else:`` became ``khác:``): fenced and inline code are protected, and so are lines that look like
code even without fences (Alpaca's code answers have none); see :data:`CODE_LINE`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from .errors import ProtectionError

OPEN, CLOSE = "\u27e6", "\u27e7"
TOKEN_RE = re.compile(rf"{OPEN}[ \t\u00a0]*(\d+)[ \t\u00a0]*{CLOSE}")

FENCE = re.compile(r"```[\s\S]*?(?:```|\Z)|^[ \t]*~~~[\s\S]*?(?:^[ \t]*~~~[ \t]*$|\Z)", re.M)
INLINE_CODE = re.compile(r"``[^\n]+?``|`[^`\n]+`")
URL = re.compile(r"\b(?:https?|ftp)://[^\s<>\"'`]+|\bwww\.[A-Za-z0-9-]+\.[^\s<>\"'`]+", re.I)
EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
TAG = re.compile(r"</?[A-Za-z][\w:-]*(?:\s[^<>\n]*)?/?>")
PLACEHOLDER = re.compile(
    r"\{\{[^{}\n]*\}\}"  # {{ jinja }} / {{mustache}}
    r"|\{[A-Za-z0-9_.\[\]:!<>^,=*+#-]*\}"  # str.format: {}, {0}, {name}, {x:>10}
    r"|%(?:\([A-Za-z_]\w*\))?[-+0#]*\d*(?:\.\d+)?[sdifeEgGxXocr](?![A-Za-z])"  # printf: %s, %(n)d, %.2f
    r"|\$\{[A-Za-z_]\w*\}|\$[A-Z_][A-Z0-9_]*\b"  # ${VAR}, $VAR
)
# A number standing alone (not the digit inside a word such as H2O, mp3 or 3D).
NUMBER = re.compile(r"(?<!\w)\d+(?:[.,:]\d+)*(?!\w)")
MARKER_CHAR = re.compile(f"[{OPEN}{CLOSE}]")

#: A line that is code even without fences. Kept narrow (each alternative needs code syntax, not
#: just an English word) because a false positive leaves prose untranslated.
CODE_LINE = re.compile(
    r"""^[ \t]*(?:
      (?:async[ \t]+)?def[ \t]+\w+[ \t]*\(.*
    | class[ \t]+\w+[ \t]*[(:].*
    | (?:if|elif|while)[ \t].*:[ \t]*(?:\#.*)?
    | for[ \t]+\w+(?:[ \t]*,[ \t]*\w+)*[ \t]+in[ \t].*:[ \t]*(?:\#.*)?
    | (?:else|try|finally)[ \t]*:[ \t]*(?:\#.*)?
    | except\b.*:[ \t]*
    | with[ \t].*[ \t]as[ \t]+\w+[ \t]*:[ \t]*
    | import[ \t]+[\w.]+(?:[ \t]*,[ \t]*[\w.]+)*(?:[ \t]+as[ \t]+\w+)?
    | from[ \t]+[\w.]+[ \t]+import[ \t].+
    | return(?:[ \t]*|[ \t].*[-(\[=+*/%<>].*|[ \t]+[\w.]+)
    | (?:break|continue|pass)[ \t]*;?
    | [A-Za-z_][\w.]*(?:\[[^\]\n]*\])*[ \t]*(?:[-+*/%&|^]|//|\*\*)?=(?!=)
      (?!.*,[ \t]+(?:where|which|and|so|then|because|with|i\.e\.|e\.g\.)[ \t])  # "y = mx + b, where m is..." is prose
      .*
    | [A-Za-z_][\w.]*\(.*\)[ \t]*;?
    | .*[(=].*;[ \t]*
    | .*[)=][ \t]*\{[ \t]*
    | (?:else|do|try|finally)[ \t]*\{[ \t]*
    | \}[ \t]*(?:else|catch|finally|while)\b.*   # "} else {", "} catch (e) {", "} while (x);"
    | else(?:[ \t]+if[ \t]*\(.*)?[ \t]*          # a bare "else" / "else if (...)" line of C-like code
    | (?:if|while|for|switch)[ \t]*\(.*\)[ \t]*\{?[ \t]*  # C-like control line without a brace: "if (x == y)"
    | [})\]]+[;,)]*[ \t]*
    | (?:\#include|\#!|//|/\*|\*/).*
    | (?:SELECT|INSERT|UPDATE|DELETE|CREATE)\b.*\b(?:FROM|INTO|SET|TABLE)\b.*
    | (?:public|private|protected|static)[ \t]+[\w<>\[\]]+[ \t]+\w+.*[({;=].*
    | (?:function[ \t]*\w*[ \t]*\(|(?:var|let|const)[ \t]+\w+[ \t]*=).*
    )[ \t]*$""",
    re.X,
)


@dataclass(frozen=True)
class Protected:
    """``text`` with markers in place of ``spans`` (``spans[i]`` is what ``⟦i⟧`` stands for)."""

    text: str
    spans: tuple[str, ...]

    def restore(self, translated: str) -> str:
        """Put the spans back into a translation of ``text``; raise :class:`ProtectionError`."""
        problem = check_markers(self.text, translated)
        if problem:
            raise ProtectionError(problem)
        if not self.spans:
            return translated  # checked above: no marker in it
        return TOKEN_RE.sub(lambda m: self.spans[int(m.group(1))], translated)

    @property
    def translatable(self) -> bool:
        """False when nothing but markers, digits, spaces and punctuation is left to send."""
        return any(ch.isalpha() for ch in TOKEN_RE.sub("", self.text))


#: The same test run over a whole text at once: line starts (``re.M``) stand for the lines.
_CODE_LINE_ANYWHERE = re.compile(CODE_LINE.pattern, re.X | re.M)
#: Line breaks other than ``\n`` (``str.splitlines`` splits on them too, ``re.M`` does not).
_OTHER_BREAKS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_DIGIT = re.compile(r"\d")


def _code_line_spans(text: str) -> list[tuple[int, int]]:
    """Runs of code-looking lines, plus the indented or blank lines inside them."""
    if not _OTHER_BREAKS.search(text) and not _CODE_LINE_ANYWHERE.search(text):
        # Lines end at "\n" only, so no line can match on its own either: one C-level scan
        # instead of a match per line (most texts are prose).
        return []
    spans: list[tuple[int, int]] = []
    lines = text.splitlines(keepends=True)
    offsets, pos = [], 0
    for line in lines:
        offsets.append(pos)
        pos += len(line)
    i = 0
    while i < len(lines):
        if not CODE_LINE.match(lines[i].rstrip("\r\n")):
            i += 1
            continue
        end = i
        j = i + 1
        while j < len(lines):
            body = lines[j].rstrip("\r\n")
            if CODE_LINE.match(body) or (body[:1] in (" ", "\t") and body.strip()):
                end = j
            elif body.strip():
                break
            j += 1
        start = offsets[i] + (len(lines[i]) - len(lines[i].lstrip(" \t")))
        stop = offsets[end] + len(lines[end].rstrip("\r\n").rstrip())
        spans.append((start, stop))
        i = end + 1
    return spans


def _find_spans(text: str, code_lines: bool) -> list[tuple[int, int]]:
    taken: list[tuple[int, int]] = []

    def add(start: int, end: int) -> None:
        if end > start and all(end <= s or start >= e for s, e in taken):
            taken.append((start, end))

    # Each scan runs only if the text holds a character its pattern cannot match without (most
    # prose has none of them): the same spans, without a dozen regex passes per text.
    if "```" in text or "~~~" in text:
        for m in FENCE.finditer(text):
            add(*m.span())
    if "`" in text:
        for m in INLINE_CODE.finditer(text):
            add(*m.span())
    if code_lines:
        for span in _code_line_spans(text):
            add(*span)
    if "://" in text or "www." in text.lower():
        for m in URL.finditer(text):
            add(m.start(), m.start() + len(_trim_url(m.group())))
    for pattern, needed in ((EMAIL, "@" in text), (TAG, "<" in text),
                            (PLACEHOLDER, "{" in text or "%" in text or "$" in text),
                            (NUMBER, _DIGIT.search(text) is not None),
                            (MARKER_CHAR, OPEN in text or CLOSE in text)):
        if needed:
            for m in pattern.finditer(text):
                add(*m.span())
    if len(taken) < 2:
        return taken
    taken.sort()
    merged: list[tuple[int, int]] = []
    for start, end in taken:  # touching spans become one marker: fewer characters, fewer risks
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def _trim_url(url: str) -> str:
    # Sentence punctuation after a link is not part of it; a ')' is, when it closes a '(' inside.
    while url and url[-1] in ".,;:!?'\"]}>" or (url.endswith(")") and url.count("(") < url.count(")")):
        url = url[:-1]
    return url


def protect(text: str, code_lines: bool = True) -> Protected:
    """Replace every protected span of ``text`` with a numbered marker."""
    parts: list[str] = []
    spans: list[str] = []
    pos = 0
    for start, end in _find_spans(text, code_lines):
        parts.append(text[pos:start])
        parts.append(f"{OPEN}{len(spans)}{CLOSE}")
        spans.append(text[start:end])
        pos = end
    parts.append(text[pos:])
    return Protected("".join(parts), tuple(spans))


def marker_ids(text: str) -> list[int]:
    return [int(m.group(1)) for m in TOKEN_RE.finditer(text)]


def check_markers(sent: str, received: str) -> str | None:
    """Why ``received`` is not a faithful translation of ``sent``'s markers, or None if it is."""
    if OPEN not in sent and CLOSE not in sent and OPEN not in received and CLOSE not in received:
        return None  # no marker sent, none received (most texts): nothing to compare
    want, got = Counter(marker_ids(sent)), Counter(marker_ids(received))
    problems = []
    missing = sorted(want - got)
    if missing:
        problems.append("missing " + " ".join(f"{OPEN}{i}{CLOSE}" for i in missing))
    extra = sorted(got - want)
    if extra:
        problems.append("unexpected or repeated " + " ".join(f"{OPEN}{i}{CLOSE}" for i in extra))
    if MARKER_CHAR.search(TOKEN_RE.sub("", received)):
        problems.append("a damaged marker")
    if problems:
        return "protected span markers came back wrong: " + "; ".join(problems)
    return None


def canonical_markers(text: str) -> str:
    """``⟦ 3 ⟧`` -> ``⟦3⟧`` so cached translations look like what was sent."""
    if OPEN not in text:
        return text
    return TOKEN_RE.sub(lambda m: f"{OPEN}{m.group(1)}{CLOSE}", text)
