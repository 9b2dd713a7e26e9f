"""Reading two scores out of a judge's free text.

The prompt asks for "8 7" on the first line; real judges also write "8, 7", "8/10 7/10",
"Assistant 1: 8 ... Assistant 2: 7", per-aspect lists under "Assistant 1:" / "Assistant 2:"
headings, and math reviews that solve the problem first and end with "a score of 10 ... 1" or a
Python tuple. Strategies run from the strictest to the loosest and the first that finds both
scores wins; each result names its ``method`` so a report can show how scores were read. Text none
of them can read gives ``score1 = score2 = None`` and an ``error``: never a -1 that could be
averaged into a score.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from statistics import fmean
from typing import Callable, Mapping

NUM = r"(\d{1,2}(?:\.\d+)?)"
OUT_OF_10 = r"(?:\s*/\s*10(?![\d.])|\s+out\s+of\s+10\b)"
MAX_SCORE = 10.0
ASPECTS = ("helpfulness", "relevance", "accuracy", "level_of_details")


@dataclass(frozen=True)
class ParsedScores:
    """Both scores (``None`` when unreadable), how they were read, and any per-aspect scores."""

    score1: float | None
    score2: float | None
    method: str = ""
    aspects: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.score1 is not None and self.score2 is not None


def _valid(*values: float) -> bool:
    return all(0.0 <= v <= MAX_SCORE for v in values)


def _clean(line: str) -> str:
    # Markdown emphasis, bullets and a leading "Scores:" label carry no information.
    line = re.sub(r"[*_`#>]+", " ", line).strip()
    return re.sub(r"^(?:-\s+)?(?:overall\s+)?(?:scores?|ratings?)\s*[:=-]\s*", "", line, flags=re.I).strip()


# -- 1. the first line holds just the two numbers -----------------------------------------------
_PAIR_LINE = re.compile(
    rf"^[(\[]?\s*{NUM}{OUT_OF_10}?\s*(?:,|;|\s|\band\b|\bvs\.?|\||-)\s*{NUM}{OUT_OF_10}?\s*[)\]]?\.?$", re.I
)
_SLASH_PAIR = re.compile(rf"^{NUM}\s*/\s*{NUM}$")  # "9/1": two scores, unless the second is 10


def first_line(text: str) -> tuple[float, float] | None:
    for raw in text.splitlines():
        line = _clean(raw)
        if not line:
            continue
        m = _PAIR_LINE.match(line)
        if m:
            return float(m.group(1)), float(m.group(2))
        m = _SLASH_PAIR.match(line)
        if m and float(m.group(2)) != MAX_SCORE:
            return float(m.group(1)), float(m.group(2))
        return None  # only the first non-empty line counts
    return None


# -- 2. a tuple the math prompt asks for: "(10, 1)" ------------------------------------------------
_TUPLE = re.compile(rf"[(\[]\s*{NUM}\s*,\s*{NUM}\s*[)\]]")
_TUPLE_CUE = re.compile(r"(score|tuple|rating|rate)", re.I)


def tuple_pair(text: str) -> tuple[float, float] | None:
    # Coordinates such as "(10, 4)" also look like tuples: count one only when it stands on its
    # own line or the words just before it speak of scores.
    found = None
    for m in _TUPLE.finditer(text):
        line_start = text.rfind("\n", 0, m.start()) + 1
        line_end = text.find("\n", m.end())
        line = text[line_start : line_end if line_end >= 0 else len(text)]
        alone = _clean(line).strip(" .") in (m.group(0), "")
        cue = _TUPLE_CUE.search(text[max(0, m.start() - 60) : m.start()])
        if alone or cue:
            found = (float(m.group(1)), float(m.group(2)))
    return found


# -- 3. "Assistant 1:" / "Assistant 2:" sections, with a score or a list of aspect scores ---------
_HEADING = re.compile(
    r"^[\s>*#\-\d.]*?\**\s*Assistant\s*([12])(?:'s)?(?:\s+(?:answer|response|submission|code|solution))?"
    r"\s*\**\s*(?::|$)\s*\**\s*(.*)$",
    re.I,
)
_ASPECT_LINE = re.compile(rf"^[\s>*\-•\d.)]*?([A-Za-z][\w &/'()-]{{0,40}}?)\s*\**\s*:\s*\**\s*{NUM}{OUT_OF_10}?\s*\**\.?$")
_VALUE_ONLY = re.compile(rf"^\**\s*{NUM}{OUT_OF_10}?\s*\**\.?$")
_OVERALL = re.compile(r"overall|score|total|final|rating", re.I)


def _norm_label(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.strip().lower()).strip("_")


def _section_value(head: str, lines: list[str], who: int) -> tuple[float | None, dict[str, float]]:
    aspects: dict[str, float] = {}
    overall = None
    m = _VALUE_ONLY.match(head.strip())
    if m:
        overall = float(m.group(1))
    for line in lines:
        a = _ASPECT_LINE.match(line.strip())
        if not a:
            continue
        label, value = _norm_label(a.group(1)), float(a.group(2))
        if _OVERALL.search(label):
            overall = value if overall is None else overall
        else:
            aspects[label] = value
    if overall is None and aspects:
        overall = fmean(aspects.values())  # a list of aspects with no overall: their mean
    if overall is None:
        overall = _section_prose_score(lines, who)
    return overall, aspects


def sections(text: str) -> tuple[tuple[float, float], dict[str, tuple[float, float]]] | None:
    current: int | None = None
    found: dict[int, list[tuple[str, list[str]]]] = {1: [], 2: []}
    for line in text.splitlines():
        m = _HEADING.match(line)
        if m:
            current = int(m.group(1))
            found[current].append((m.group(2), []))
        elif current is not None:
            found[current][-1][1].append(line)
    values: dict[int, tuple[float, dict[str, float]]] = {}
    for who in (1, 2):
        for head, lines in reversed(found[who]):  # a closing summary outranks the first section
            value, aspects = _section_value(head, lines, who)
            if value is not None:
                values[who] = (value, aspects)
                break
    if len(values) < 2:
        return None
    (v1, a1), (v2, a2) = values[1], values[2]
    shared = {k: (a1[k], a2[k]) for k in a1 if k in a2}
    return (v1, v2), shared


# -- 4. prose: "Assistant 1 receives a score of 10 ... Assistant 2 scored 1", "9/10 for Assistant 1"
# "Assistant 1" becomes "Assistant①" first, so its digit is never read as a score.
_MARK = {"1": "\u2460", "2": "\u2461"}
_NAME = re.compile(r"Assistant\s*([12])\b", re.I)
_MENTION = re.compile("Assistant([\u2460\u2461])")
_FOR = re.compile(rf"{NUM}(?:{OUT_OF_10})?\s+(?:for|to)\s+Assistant([\u2460\u2461])", re.I)
_SCORE_WORDS = re.compile(
    rf"(?:{NUM}{OUT_OF_10})"
    rf"|(?:\b(?:scores?|scored|rating|rated|rate|receives?|received|awarded|deserves?)\b[^.\n\d]{{0,30}}?{NUM}(?![\d%])(?:{OUT_OF_10})?)"
    rf"|(?:Assistant[\u2460\u2461](?:'s)?[^\S\n]*(?:score)?[^\S\n]*[:=\u2013-][^\S\n]*{NUM}(?![\d%]))",
    re.I,
)
_SENTENCE = re.compile(r"(?<!\d)[.!?;](?!\d)|\n")
_WHO = {"\u2460": 1, "\u2461": 2}


def _marked(text: str) -> str:
    return _NAME.sub(lambda m: "Assistant" + _MARK[m.group(1)], text)


def _sentences(text: str) -> list[str]:
    out, start = [], 0
    for sep in _SENTENCE.finditer(text):
        out.append(text[start : sep.start()])
        start = sep.end()
    out.append(text[start:])
    return out


def _sentence_scores(sentence: str) -> list[tuple[int | None, float]]:
    """``(assistant or None, score)`` in order of appearance within one sentence."""
    found: list[tuple[int, int | None, float]] = []
    taken: list[tuple[int, int]] = []
    for m in _FOR.finditer(sentence):
        found.append((m.start(), _WHO[m.group(2)], float(m.group(1))))
        taken.append(m.span())
    mentions = [(m.start(), _WHO[m.group(1)]) for m in _MENTION.finditer(sentence)]
    for s in _SCORE_WORDS.finditer(sentence):
        if any(a <= s.start() < b for a, b in taken):
            continue
        value = next(float(g) for g in s.groups() if g is not None)
        before = [who for pos, who in mentions if pos <= s.start()]
        after = [who for pos, who in mentions if pos > s.start()]
        who = before[-1] if before else (after[0] if after else None)
        found.append((s.start(), who, value))
    return [(who, value) for _, who, value in sorted(found, key=lambda f: f[0])]


def prose(text: str) -> tuple[float, float] | None:
    scores: dict[int, float] = {}
    for sentence in _sentences(_marked(text)):
        for who, value in _sentence_scores(sentence):
            if who is not None and _valid(value):
                scores[who] = value  # the last statement about an assistant is its verdict
    if 1 in scores and 2 in scores:
        return scores[1], scores[2]
    return None


def _section_prose_score(lines: list[str], who: int) -> float | None:
    # "I would rate their code 9 out of 10." inside an assistant's own section, in a sentence
    # that names no other assistant.
    other = "\u2461" if who == 1 else "\u2460"
    value = None
    for sentence in _sentences(_marked("\n".join(lines))):
        if other in sentence:
            continue
        for _, v in _sentence_scores(sentence):
            if _valid(v):
                value = v
    return value


# -- 5. an aspect table: "Helpfulness: 8 7" ----------------------------------------------------------
_TABLE_LINE = re.compile(
    rf"^[\s*\-•]*([A-Za-z][\w &/'-]{{0,40}}?)\s*\**\s*:\s*\**\s*{NUM}{OUT_OF_10}?\s*(?:,|;|\s|and|vs\.?)\s*{NUM}{OUT_OF_10}?\s*\**$",
    re.I,
)


def aspect_table(text: str) -> tuple[tuple[float, float], dict[str, tuple[float, float]]] | None:
    rows: dict[str, tuple[float, float]] = {}
    overall = None
    for line in text.splitlines():
        m = _TABLE_LINE.match(line.strip())
        if not m:
            continue
        label, pair = _norm_label(m.group(1)), (float(m.group(2)), float(m.group(3)))
        if _OVERALL.search(label):
            overall = pair
        else:
            rows[label] = pair
    if overall is None and len(rows) >= 2:
        overall = (fmean(a for a, _ in rows.values()), fmean(b for _, b in rows.values()))
    return (overall, rows) if overall is not None else None


def _with_aspects(fn: Callable[[str], tuple | None]) -> Callable[[str], tuple | None]:
    def wrapped(text: str) -> tuple | None:
        got = fn(text)
        return None if got is None else (got, {})

    return wrapped


STRATEGIES: tuple[tuple[str, Callable[[str], tuple | None]], ...] = (
    ("first_line", _with_aspects(first_line)),
    ("tuple", _with_aspects(tuple_pair)),
    ("aspect_table", aspect_table),
    ("sections", sections),
    ("prose", _with_aspects(prose)),
)


def parse_scores(text: str, output: str = "pair") -> ParsedScores:
    """Both scores from a judge's text, trying :data:`STRATEGIES` in order.

    :param output: what the prompt asked for; ``"tuple"`` (the math prompt) tries the tuple before
        the first line, since a math review's first line is usually the start of a solution.
    """
    if not isinstance(text, str) or not text.strip():
        return ParsedScores(None, None, error="the judge returned no text")
    order = list(STRATEGIES)
    if output == "tuple":
        order.sort(key=lambda s: s[0] != "tuple")
    for name, strategy in order:
        got = strategy(text)
        if got is None:
            continue
        (s1, s2), aspects = got
        if _valid(s1, s2):
            return ParsedScores(s1, s2, method=name, aspects=aspects)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    for name, strategy in order:  # scores were there, but not on the 0-10 scale: say so
        got = strategy(text)
        if got is not None:
            (s1, s2), _ = got
            return ParsedScores(None, None, error=f"scores {_plain_num(s1)} and {_plain_num(s2)} are outside "
                                                  f"0-{_plain_num(MAX_SCORE)} (first line: {first[:80]!r})")
    return ParsedScores(None, None, error=f"no two scores found (first line: {first[:80]!r})")


def _plain_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def parse_aspects_json(text: str) -> dict[str, tuple[float, float]]:
    """Per-aspect scores from a JSON answer ``{"assistant_1": {...}, "assistant_2": {...}}``.

    Code fences and prose around the object are tolerated; ``ValueError`` when no usable object.
    """
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        raise ValueError("no JSON object in the answer")
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"the answer is not valid JSON ({exc.msg})") from None
    sides = []
    for key in ("assistant_1", "assistant_2"):
        side = data.get(key) if isinstance(data, dict) else None
        if side is None and isinstance(data, dict):
            side = data.get(key.replace("_", " ").title()) or data.get(key[-1])
        if not isinstance(side, dict):
            raise ValueError(f"the answer has no {key!r} object")
        sides.append({_norm_label(k): v for k, v in side.items()})
    out: dict[str, tuple[float, float]] = {}
    for aspect in ASPECTS:
        try:
            pair = (float(sides[0][aspect]), float(sides[1][aspect]))
        except (KeyError, TypeError, ValueError):
            continue
        if _valid(*pair):
            out[aspect] = pair
    if not out:
        raise ValueError("the answer has none of the aspect scores " + ", ".join(ASPECTS))
    return out
