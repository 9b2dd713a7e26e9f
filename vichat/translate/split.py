"""Split a text longer than a request may carry on paragraph, line, sentence or word boundaries.

``split_text(text, limit)`` returns ``(parts, separators)`` with
``parts[0] + separators[0] + parts[1] + ... + parts[-1] == text`` and every part at most
``limit`` characters. Parts are translated on their own and rejoined with the original
separators, so paragraph breaks survive exactly. A cut never falls inside a ``⟦N⟧`` marker.
"""

from __future__ import annotations

import re

from .protect import TOKEN_RE

# Coarsest boundary first: a paragraph split keeps the most context for the translator.
BOUNDARIES = (
    re.compile(r"\n[ \t]*\n\s*"),
    re.compile(r"\n\s*"),
    re.compile(r"(?<=[.!?;:])\s+"),
    re.compile(r"\s+"),
)


def split_text(text: str, limit: int) -> tuple[list[str], list[str]]:
    """Split ``text`` into parts of at most ``limit`` characters plus the separators between them."""
    if limit < 1:
        raise ValueError("limit must be positive")
    if len(text) <= limit:
        return [text], []
    return _split(text, limit, 0)


def _split(text: str, limit: int, level: int) -> tuple[list[str], list[str]]:
    if len(text) <= limit:
        return [text], []
    if level >= len(BOUNDARIES):
        return _hard_cut(text, limit)
    pieces: list[str] = []
    gaps: list[str] = []
    pos = 0
    for m in BOUNDARIES[level].finditer(text):
        if m.start() == 0 or m.end() == len(text):
            continue  # a leading/trailing separator would make an empty part
        pieces.append(text[pos : m.start()])
        gaps.append(m.group())
        pos = m.end()
    pieces.append(text[pos:])
    if len(pieces) == 1:
        return _split(text, limit, level + 1)

    parts: list[str] = []
    seps: list[str] = []
    current: str | None = None
    for i, piece in enumerate(pieces):
        gap_before = gaps[i - 1] if i else ""
        if len(piece) > limit:
            if current is not None:
                parts.append(current)
                seps.append(gap_before)
                current = None
            elif i:
                seps.append(gap_before)
            sub_parts, sub_seps = _split(piece, limit, level + 1)
            parts.extend(sub_parts[:-1])
            seps.extend(sub_seps)
            current = sub_parts[-1]
            continue
        if current is None:
            if i and parts:
                seps.append(gap_before)
            current = piece
        elif len(current) + len(gap_before) + len(piece) <= limit:
            current += gap_before + piece
        else:
            parts.append(current)
            seps.append(gap_before)
            current = piece
    if current is not None:
        parts.append(current)
    return parts, seps


def _hard_cut(text: str, limit: int) -> tuple[list[str], list[str]]:
    markers = [m.span() for m in TOKEN_RE.finditer(text)]
    parts: list[str] = []
    pos = 0
    while len(text) - pos > limit:
        cut = pos + limit
        for start, end in markers:
            if start < cut < end:
                cut = start if start > pos else end  # never split a marker; always progress
                break
        parts.append(text[pos:cut])
        pos = cut
    parts.append(text[pos:])
    return parts, [""] * (len(parts) - 1)


def join_parts(parts: list[str], seps: list[str]) -> str:
    """Inverse of :func:`split_text`."""
    out = [parts[0]]
    for sep, part in zip(seps, parts[1:]):
        out.append(sep)
        out.append(part)
    return "".join(out)
