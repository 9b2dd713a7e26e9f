"""Find code that machine translation broke: Vietnamese words where code words belong.

The public Vietnamese Alpaca was translated without protecting code, so ``for x in items:`` came
back as ``cho x trong items:``, ``print(`` as ``in (``, ``else`` as ``khác``, ``SELECT ... FROM`` as
``Chọn ... từ`` and ``<table>`` as ``<Bảng>``. :func:`code_problems` finds such lines in a text and
:func:`record_code_problems` in a record; each :class:`CodeHit` names the rule, the field, the line
and the line's text, so a report can be checked by eye.

How the rules avoid prose (Vietnamese prose uses the same words: "nhập khẩu" is also "to import
goods", "Nếu ...:" opens many sentences, "Chọn từ" is "choose a word"):

* every rule needs code syntax next to the Vietnamese word: a line ending in ``:`` followed by a more
  indented line, a ``;`` or ``{`` line end, a tag, a call parenthesis, a ``[``/``{`` literal;
* Vietnamese inside string literals and comments is fine (``print("Xin chào")`` is good code);
* a response to a request for pseudocode ("mã giả") may be Vietnamese: it is not checked;
* with the English original of the record (``reference``), Python is also checked by ``ast``: a
  block that the English version parses and the Vietnamese does not is reported (``py-syntax``).

What it does not see: damage that leaves no Vietnamese word in code (``Console.log`` capitalised,
spaces inside a regular expression, a garbled identifier such as ``getEuityById``). The measured
precision and recall on a hand-labelled sample are in docs/datasets.md.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from .language import has_vietnamese

#: Record fields that are checked, in report order.
FIELDS = ("instruction", "input", "output")


@dataclass(frozen=True)
class CodeHit:
    """One line of code that translation broke: the rule, where it is, and the line itself."""

    rule: str
    field: str
    line: int  # 1-based, within the field's text
    text: str

    def describe(self) -> str:
        """``py-for at output line 3: 'cho x trong phạm vi (10):'``."""
        return f"{self.rule} at {self.field} line {self.line}: {self.text!r}"

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "field": self.field, "line": self.line, "text": self.text}


#: Rule names and what each one finds (docs/datasets.md lists them too).
RULES: dict[str, str] = {
    "py-for": "'for x in y:' translated ('cho x trong y:', 'Đối với x trong phạm vi (...):')",
    "py-if": "'if/elif cond:' translated ('Nếu x > 0:', 'khác nếu ...:') with a code condition",
    "py-else": "'else:' translated ('khác:') opening an indented block",
    "py-print": "'print(...)' translated ('in (...)')",
    "py-import": "'import'/'from ... import' translated ('nhập khẩu numpy dưới dạng np')",
    "py-return": "'return' translated ('trả lại x', 'trả về x', 'trở lại x') in a code block",
    "py-block": "'def', 'class', 'while', 'try', 'except', 'with' translated, opening an indented block",
    "py-comprehension": "'[x for x in y]' translated ('[x cho x trong y]')",
    "py-syntax": "Python that the English original parses and the translation does not (needs the reference)",
    "js-function": "'function f(...) {' translated ('hàm f (...) {', 'chức năng f (...)')",
    "js-else": "'} else {' / 'else if (' translated ('} khác {')",
    "js-let": "'let x = ...;' translated ('Đặt x = ...;', 'hãy để x = ...;')",
    "c-statement": "a C/Java/JavaScript/CSS statement (ending in ';' or '{', or inside braces) with a "
    "Vietnamese word outside strings and comments",
    "css-property": "a CSS property name translated ('kích thước phông chữ: 18px;')",
    "html-tag": "an HTML tag or attribute translated ('<Bảng>', '<nút loại = ...>', style='màu nền: ...')",
    "sql": "SQL keywords translated ('Chọn * từ bảng', 'Chèn vào ... giá trị (...)')",
    "assignment": "a variable named in Vietnamese assigned a code value ('danh sách = [1, 2]')",
}

# ----------------------------------------------------------------------------- text helpers

_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|`[^`\n]*`')
# A comment: // or /* */ anywhere, '#' at a line start or after a space (not a CSS colour #fff).
_COMMENT = re.compile(r"//.*$|/\*.*?(?:\*/|$)|(?:^|(?<=\s))#(?![0-9A-Fa-f]{3,8}\b).*$")
_INDENT = re.compile(r"^[ \t]*")
_BULLET = re.compile(r"^\s*(?:[-•*●+]|\d+[.)]|[a-zA-Z][.)])\s")
_PSEUDOCODE = re.compile(r"mã giả|giả mã|pseudo", re.I)
_SQL_CONTEXT = re.compile(r"\bsql\b|truy vấn|cơ sở dữ liệu|\bbảng\b|database|query|table", re.I)

# Vietnamese words that stand for Python/JS keywords (the rules below match them case-insensitively).
_FOR = r"(?:cho|đối với)"
_RETURN = r"(?:trả lại|trả về|trở lại)"
_OPERATOR = re.compile(r"==|!=|! =|<=|>=|[<>%]|\+=|-=|\b(?:and|or|not|is)\b|\btrong\b\s+[\w\[(\"']")


def code_part(line: str) -> str:
    """``line`` without string literals and comments (where Vietnamese is legitimate)."""
    return _COMMENT.sub("", _STRING.sub('""', line))


#: A line without any of these cannot match a rule (keeps the scan of 50k records fast).
_GATE = re.compile(r"[(){};=<\[]|:\s*$|^\s|^(?:[Cc]họn|CHỌN|[Cc]hèn|CHÈN|[Cc]ập nhật|[Xx]óa|[Nn]hập|NHẬP|[Tt]ừ) ")
_CODE_PUNCT = re.compile(r"[{}();=\[\]]")


def strip_prose_prefix(line: str) -> str:
    """The code after a prose lead-in: a prompt's ``Sửa đoạn mã sau: for (...) {`` gives ``for (...) {``.

    Vietnamese Alpaca prompts are the instruction and the input joined by ``": "``, so the first line
    of a code input starts with the Vietnamese instruction.
    """
    cut = line.find(": ")
    if cut < 0:
        return line
    prose = line[:cut]
    if len(prose.split()) >= 4 and has_vietnamese(prose) and not _CODE_PUNCT.search(prose):
        return line[cut + 2 :].lstrip()
    return line


def _indent(line: str) -> int:
    return len(_INDENT.match(line).group().expandtabs(4))


def _next_line(lines: Sequence[str], i: int) -> str | None:
    for j in range(i + 1, len(lines)):
        if lines[j].strip():
            return lines[j]
    return None


def _opens_block(lines: Sequence[str], i: int) -> bool:
    """True when the next non-blank line is more indented than line ``i`` and is not a list item."""
    nxt = _next_line(lines, i)
    return nxt is not None and _indent(nxt) > _indent(lines[i]) and not _BULLET.match(nxt)


def _vi_code(line: str) -> bool:
    """A Vietnamese word outside the line's strings and comments."""
    return has_vietnamese(code_part(line))


# ----------------------------------------------------------------------------- line rules

_I = re.IGNORECASE
PY_FOR = re.compile(rf"^\s*{_FOR}\s+(?P<var>[^\s:()]+(?:\s+[^\s:()]+){{0,2}})\s+trong\s+(?P<it>.+?):\s*(?:#.*)?$", _I)
PY_FOR_RANGE = re.compile(rf"^\s*{_FOR}\s+\S+\s+trong\s+phạm vi\s*\(", _I)  # even with the ':' lost
PY_IF = re.compile(r"^\s*(?:nếu|khác nếu|elif)\s+(?P<cond>.+?):\s*(?:#.*)?$", _I)
PY_ELSE = re.compile(r"^\s*khác\s*:\s*(?:#.*)?$", _I)
PY_PRINT = re.compile(r"^\s*in\s*\(.*\)\s*;?\s*(?:#.*|//.*)?$", _I)
PY_IMPORT = re.compile(
    r"^\s*(?:nhập khẩu\s+[\w.]+(?:\s+(?:dưới dạng|như|as)\s+\w+)?"
    r"|nhập khẩu\s+.{1,40}\s+dưới dạng\s+\w+"
    r"|nhập\s+[a-z_][a-z0-9_.]*(?:\s+(?:dưới dạng|như|as)\s+\w+)?"
    r"|(?:từ|from)\s+[\w.]+\s+(?:nhập khẩu|nhập)\s+.+"
    r"|from\s+[\w.]+\s+import\s+.*[^\x00-\x7f].*)\s*$",
    _I,
)
PY_RETURN = re.compile(rf"^\s*{_RETURN}\b(?P<rest>.*)$", _I)
PY_BLOCK = re.compile(
    r"^\s*(?:(?:định nghĩa|xác định)\s+\w+\s*\(.*\)"
    r"|lớp\s+\w+(?:\s*\(.*\))?"
    r"|trong khi\s+.+"
    r"|thử|ngoại trừ(?:\s+.+)?"
    r"|với\s+.+\s+như\s+\w+"
    r"|(?:def|class)\s+.*[^\x00-\x7f].*"
    r")\s*:\s*(?:#.*)?$",
    _I,
)
PY_COMPREHENSION = re.compile(rf"[\[{{(]\s*[\w.()\[\]*+ -]+\s+{_FOR}\s+\w+\s+trong\s+", _I)
JS_FUNCTION = re.compile(
    r"(?:^|\s)(?:hàm|chức năng)\s*[\w$]*\s*\([^()]*\)\s*\{?\s*$"  # "hàm tong (a, b) {"
    r"|\bfunction\s+[\w$]+\s*\([^)]*[^\x00-\x7f][^)]*\)",  # "function f (mảng)"
    _I,
)
JS_ELSE = re.compile(r"\}\s*khác\b|^\s*khác\s*\{|\bkhác nếu\s*\(", _I)
JS_LET = re.compile(r"^\s*(?:đặt|để|hãy để)\s+[^\s=]+(?:\s+[^\s=]+){0,2}\s*=[^=].*;\s*(?://.*)?$", _I)
C_RETURN = re.compile(rf"^\s*{_RETURN}\b.*;\s*(?://.*)?$", _I)
CSS_PROPERTY = re.compile(r"(?:^|[{;])\s*(?P<prop>[^\s:;{}\"'][^:;{}\"']*)\s*:\s*[^;{}]+;")
HTML_TAG = re.compile(r"<\s*/?\s*(?P<name>[^\s<>/=\"'!?]+)(?P<attrs>\s[^<>]*)?/?>")
HTML_STYLE = re.compile(r"\bstyle\s*=\s*\"(?P<css>[^\"]*)\"", _I)
HTML_CONTEXT = re.compile(
    r"</?(?:html|head|body|div|span|p|a|table|tr|td|th|ul|ol|li|form|input|br|h[1-6]|button|select|option|label|img)\b",
    _I,
)
SQL_SELECT = re.compile(r"^\s*(?:\d+[.)]\s*|truy vấn \d+:\s*)?chọn\s+(?P<cols>.+?)\s+từ\s+\S", _I | re.S)
_SQL_FROM_LINE = re.compile(r"^\s*từ\s+\S", _I)
SQL_OTHER = re.compile(r"^\s*(?:chèn vào\s+.+\bgiá trị\s*\(|cập nhật\s+\S+\s+đặt\s+\S+\s*=|xóa từ\s+\S+)", _I)
ASSIGNMENT = re.compile(r"^\s*(?P<name>[^\s=()\[\]]+(?:\s+[^\s=()\[\]]+){0,2})\s*(?:=|\+=|-=)\s*(?P<value>[^=].*)$")
# A value only code has: a list/dict literal, a string, a method call, a call of a name that is not
# a maths function ("khoảng cách = sqrt (...)" and "Kết quả = 11" are maths answers, not code).
_CODE_VALUE = re.compile(
    r"^\s*(?:[\[{]|\"|'|[^\W\d][\w ]{0,20}\.\w+\s*\("
    r"|(?!(?:sqrt|log\d*|ln|sin|cos|tan|exp|abs|max|min|f|g|h|p|gcd|lcm)\s*\()[A-Za-z_][\w.]*\s*\()",
    re.I,
)
_SENTENCE = re.compile(r"\w[.!?]\s+[^\W\d_]{2,}")  # "... cho 2. Điều này": prose, not a statement
_C_LINE = re.compile(r"(?:;|\{|\{\s*\}|\}\s*;?)\s*(?://.*)?$")
_C_STRUCTURE = re.compile(
    r"=|\[|\+\+|--|\.\w+\s*\(|\w\s*\(|^\s*\}|\{\s*$"
    r"|^\s*(?:int|float|double|char|string|bool|boolean|const|let|var|public|private|static|void|return)\b",
    _I,
)


def _python_hits(lines: Sequence[str], i: int) -> list[str]:
    line = lines[i]
    hits = []
    m = PY_FOR.match(line)
    if m:
        it = m.group("it")
        if _opens_block(lines, i) or re.search(r"[(\[_'\"]", it) or re.fullmatch(r"\s*[A-Za-z_]\w*\s*", it):
            hits.append("py-for")
    elif PY_FOR_RANGE.match(line):
        hits.append("py-for")
    m = PY_IF.match(line)
    if m and _opens_block(lines, i) and (_OPERATOR.search(m.group("cond")) or re.search(r"\w_\w|\(", m.group("cond"))):
        if has_vietnamese(line.split(maxsplit=1)[0]) or _vi_code(m.group("cond")) or line.lstrip()[:1].isupper():
            hits.append("py-if")
    if PY_ELSE.match(line) and _opens_block(lines, i):
        hits.append("py-else")
    if PY_PRINT.match(line):
        hits.append("py-print")
    if PY_IMPORT.match(line):
        hits.append("py-import")
    if PY_BLOCK.match(line) and _opens_block(lines, i):
        hits.append("py-block")
    if PY_COMPREHENSION.search(code_part(line)):
        hits.append("py-comprehension")
    return hits


class _Lazy:
    """A boolean computed on first use (the SQL context search is the slowest step of a scan)."""

    def __init__(self, compute: Callable[[], bool]) -> None:
        self.compute, self.value = compute, None

    def __call__(self) -> bool:
        if self.value is None:
            self.value = self.compute()
        return self.value


def _c_hits(line: str, in_braces: bool, sql_context: _Lazy, html_context: bool, sql_line: str) -> list[str]:
    hits: list[str] = []
    if not has_vietnamese(sql_line):  # every rule below needs a Vietnamese word
        return hits
    code = code_part(line)
    if JS_FUNCTION.search(code):
        hits.append("js-function")
    if JS_ELSE.search(code):
        hits.append("js-else")
    if JS_LET.match(line):
        hits.append("js-let")
    if C_RETURN.match(line):
        hits.append("py-return")
    vi = has_vietnamese(code)
    if vi and not _BULLET.match(line) and not _SENTENCE.search(code):
        if (_C_LINE.search(code) and _C_STRUCTURE.search(code)) or (in_braces and re.search(r"[;{]\s*$", code)):
            hits.append("c-statement")
    for m in CSS_PROPERTY.finditer(code):
        if has_vietnamese(m.group("prop")) and (in_braces or "{" in code) and len(m.group("prop").split()) <= 4:
            hits.append("css-property")
            break
    for m in HTML_TAG.finditer(line):
        name, attrs = m.group("name"), m.group("attrs") or ""
        attr_names = re.findall(r"([^\s=\"']+)\s*=", attrs)
        if (has_vietnamese(name) or any(has_vietnamese(a) for a in attr_names)) and (html_context or "=" in attrs):
            hits.append("html-tag")
            break
    for m in HTML_STYLE.finditer(line):
        if any(has_vietnamese(prop.split(":")[0]) for prop in m.group("css").split(";") if ":" in prop):
            hits.append("html-tag")
            break
    m = SQL_SELECT.match(sql_line)
    if m and (sql_line.rstrip().endswith(";") or "*" in m.group("cols") or sql_context()):
        cols = m.group("cols")
        if "*" in cols or re.search(r"[(,_]", cols) or not has_vietnamese(cols):
            hits.append("sql")
    elif SQL_OTHER.match(line) and (line.rstrip().endswith(";") or sql_context()):
        hits.append("sql")
    m = ASSIGNMENT.match(line)
    if m and has_vietnamese(m.group("name")) and _CODE_VALUE.match(code_part(m.group("value"))):
        # "Ma trận A = [[1, 2], ...]" names a maths object; code names are not "noun + one letter".
        maths_name = re.fullmatch(r".*[^\x00-\x7f].*\s[A-Za-z]", m.group("name").strip())
        if not m.group("name").rstrip().endswith(":") and not _BULLET.match(line) and not maths_name:
            hits.append("assignment")
    return hits


def code_problems(text: str, *, field: str = "output", context: str = "", reference: str | None = None) -> list[CodeHit]:
    """Lines of ``text`` whose code the translation broke, in line order (one hit per rule and line).

    :param field: the field name the hits report.
    :param context: the rest of the record (the instruction): decides whether SQL is expected.
    :param reference: the English original of ``text``; enables the ``py-syntax`` check.
    """
    if not text:
        return []
    lines = text.splitlines()
    lines[0] = strip_prose_prefix(lines[0])  # a joined prompt: "Sửa đoạn mã sau: cho i trong ..."
    sql_context = _Lazy(lambda: bool(_SQL_CONTEXT.search(context) or _SQL_CONTEXT.search(text)))
    html_context = bool(HTML_CONTEXT.search(text))
    hits: list[CodeHit] = []
    depth = 0
    python_lines: list[int] = []  # lines that a py-* rule flagged: the indented code after them is code too
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        if not _GATE.search(line):  # no code punctuation, no indentation: plain prose
            continue
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        sql_line = f"{line} {nxt}" if _SQL_FROM_LINE.match(nxt) else line  # SELECT ... / FROM ... on two lines
        rules = _python_hits(lines, i) + _c_hits(line, depth > 0, sql_context, html_context, sql_line)
        m = PY_RETURN.match(line)
        if m and "py-return" not in rules and _indent(line) > 0 and python_lines:
            rules.append("py-return")
        if any(r.startswith("py-") for r in rules):
            python_lines.append(i)
        code = code_part(line)
        depth = max(0, depth + code.count("{") - code.count("}"))
        for rule in dict.fromkeys(rules):
            hits.append(CodeHit(rule, field, i + 1, line.strip()[:160]))
    if reference is not None:
        hits.extend(_syntax_hits(text, reference, field))
    return hits


def _python_blocks(text: str) -> list[tuple[int, str]]:
    """``(first line, source)`` of each fenced block, or the whole text when it has no fence."""
    fences = list(re.finditer(r"```[^\n]*\n(.*?)```", text, re.S))
    if not fences:
        return [(1, text)]
    return [(text[: m.start(1)].count("\n") + 1, m.group(1)) for m in fences]


def _parses(source: str) -> tuple[bool, int]:
    try:
        ast.parse(textwrap.dedent(source))
    except (SyntaxError, ValueError) as exc:
        return False, getattr(exc, "lineno", None) or 1
    return True, 0


def _syntax_hits(text: str, reference: str, field: str) -> list[CodeHit]:
    # Only blocks whose English original is Python (it parses and has a statement that prose never
    # is), and only when the translation of the same block no longer parses.
    ref_blocks, blocks = _python_blocks(reference), _python_blocks(text)
    if len(ref_blocks) != len(blocks):
        return []
    hits = []
    for (_, ref), (start, block) in zip(ref_blocks, blocks):
        ok, _ = _parses(ref)
        if not ok or not re.search(r"^\s*(?:def|class|for|if|while|import|from|print\(|return)\b", ref, re.M):
            continue
        ok, lineno = _parses(block)
        if not ok:
            lines = textwrap.dedent(block).splitlines()
            shown = lines[lineno - 1].strip() if 0 < lineno <= len(lines) else ""
            hits.append(CodeHit("py-syntax", field, start + lineno - 1, shown[:160]))
    return hits


def _asks_for_pseudocode(prompt: str) -> bool:
    lowered = prompt.lower()
    return ("giả" in lowered or "pseudo" in lowered) and bool(_PSEUDOCODE.search(prompt))


def record_code_problems(record: Any, reference: Mapping[str, str] | None = None) -> list[CodeHit]:
    """Hits in a record's ``instruction``, ``input`` and ``output`` (a :class:`Record` or a mapping).

    A response to a request for pseudocode ("mã giả") is not checked: pseudocode may be Vietnamese.
    ``reference`` is the English original (same field names) when known.
    """
    get = record.get if isinstance(record, Mapping) else lambda name, default="": getattr(record, name, default)
    instruction = get("instruction", "") or ""
    hits: list[CodeHit] = []
    for name in FIELDS:
        value = get(name, "") or ""
        if not isinstance(value, str) or not value:
            continue
        if name == "output" and _asks_for_pseudocode(instruction + "\n" + (get("input", "") or "")):
            continue
        ref = reference.get(name) if reference else None
        hits.extend(code_problems(value, field=name, context=instruction, reference=ref or None))
    return hits


def describe_hits(hits: Iterable[CodeHit], limit: int = 3) -> str:
    """``py-for at output line 1: '...'; py-print at output line 2: '...' (+4 more)``."""
    hits = list(hits)
    text = "; ".join(h.describe() for h in hits[:limit])
    return text + (f" (+{len(hits) - limit} more)" if len(hits) > limit else "")
