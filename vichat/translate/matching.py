"""Find the English original of a translated record: by id, by position, or by content.

``vichat translate --repair`` re-translates broken records from their English source, so it must
know which source record each one came from. Three ways, chosen with ``--match``:

* ``id``: both files carry an ``id`` field; equal ids match.
* ``index``: the n-th record of one file is the n-th of the other (files kept in step).
* ``content``: for files without ids whose order drifted (the Vietnamese Alpaca of GPT4VN was
  translated from AlpacaDataCleaned, which dropped and edited records of ``alpaca_data.json``).
  What a translation leaves alone is compared: numbers, code identifiers, Latin names, each
  weighted by how rare it is in the source file. The best source record must cover at least
  :data:`MIN_SCORE` of the record's weighted tokens; between near-equal scores the record nearest
  in file position wins (both files keep Alpaca's order), and a tie that position cannot break
  is reported as ambiguous rather than guessed. Last, :func:`check_order` rejects a match whose
  position offset disagrees with the confident matches around it (a source file that holds only part
  of the original, such as the first 2,000 Alpaca records, otherwise tempts records beyond its end
  into look-alikes).

A record without a match is reported with the reason (no shared tokens, too weak, ambiguous, id
not in the source) and left as it is.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Mapping, Sequence

MATCH_MODES = ("auto", "id", "index", "content")
#: A content match must cover at least this share of the record's weighted tokens.
MIN_SCORE = 0.6
#: Matches at least this good fix the local offset between the files (see :func:`check_order`).
CONFIDENT = 0.9
#: Scores closer than this are a tie that file position decides.
TIE = 0.1

_WORD = re.compile(r"\w+")
_ASCII_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+")


@dataclass(frozen=True)
class Match:
    """The source index a record matched, or ``None`` and why not."""

    source: int | None
    score: float = 1.0
    reason: str = ""


def tokens(text: str) -> Counter:
    """The untranslatable tokens of ``text``: whole ASCII words and numbers, lower-cased (the ASCII
    pieces of a Vietnamese word, "T" and "o" of "Tạo", are not tokens)."""
    return Counter(w.lower() for w in _WORD.findall(text) if _ASCII_TOKEN.fullmatch(w))


class ContentIndex:
    """An inverted index of the source records' tokens, weighted by inverse document frequency."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.bags = [tokens(t) for t in texts]
        self.postings: dict[str, list[int]] = defaultdict(list)
        for i, bag in enumerate(self.bags):
            for tok in bag:
                self.postings[tok].append(i)
        n = max(1, len(texts))
        self.idf = {tok: math.log(1 + n / len(ids)) for tok, ids in self.postings.items()}

    def match(self, text: str, position: int) -> Match:
        """The source record that ``text`` (at ``position`` in its file) was translated from."""
        # Tokens the source never uses are Vietnamese words without diacritics ("cho", "trong"):
        # they cannot tell source records apart.
        bag = {tok: n for tok, n in tokens(text).items() if tok in self.idf}
        total = sum(self.idf[t] * n for t, n in bag.items())
        if not bag or total == 0:
            return Match(None, 0.0, "no number, name or code token shared with any source record")
        # Candidates share at least one of the record's rarest tokens.
        rare = sorted(bag, key=lambda t: -self.idf[t])[:8]
        candidates = {i for t in rare for i in self.postings[t]}
        scored = []
        for i in candidates:
            other = self.bags[i]
            # The share of the record's weighted tokens that the source record also has. (What the
            # source has beyond them is mostly English prose that the translation replaced.)
            covered = sum(self.idf[t] * min(n, other.get(t, 0)) for t, n in bag.items())
            scored.append((covered / total, i))
        if not scored:
            return Match(None, 0.0, "no source record shares a rare token")
        best = max(s for s, _ in scored)
        if best < MIN_SCORE:
            return Match(None, best, f"best content score {best:.2f} is below {MIN_SCORE}")
        close = sorted((abs(i - position), i, s) for s, i in scored if s >= max(best - TIE, MIN_SCORE))
        if len(close) > 1 and close[0][0] == close[1][0]:
            return Match(None, best, f"ambiguous: source records {close[0][1]} and {close[1][1]} match equally")
        _, i, s = close[0]
        return Match(i, s)


def check_order(matches: Mapping[int, Match], neighbours: int = 5, slack: int = 50) -> dict[int, Match]:
    """Reject content matches out of step with the file order.

    ``matches`` maps a record's position to its match. The offset (source position minus record
    position) of each match is compared with the median offset of the ``neighbours`` nearest
    confident matches (score >= :data:`CONFIDENT`, itself excluded); a difference above ``slack``
    rejects it. With fewer than 3 confident matches nothing is checked.
    """
    confident = sorted((pos, m.source - pos) for pos, m in matches.items() if m.source is not None and m.score >= CONFIDENT)
    if len(confident) < 3:
        return dict(matches)
    out = {}
    for pos, m in matches.items():
        if m.source is None:
            out[pos] = m
            continue
        near = sorted((abs(p - pos), off) for p, off in confident if p != pos)[:neighbours]
        offsets = sorted(off for _, off in near)
        median = offsets[len(offsets) // 2]
        offset = m.source - pos
        if abs(offset - median) > slack:
            out[pos] = Match(None, m.score, f"out of order: matched source record {m.source} ({offset:+d} positions) "
                                            f"where nearby records are {median:+d} away; the source file may lack its original")
        else:
            out[pos] = m
    return out


def match_by_id(ids: Sequence[str | None], source_ids: Sequence[str | None]) -> list[Match]:
    """Equal ids match; a missing or unknown id is reported."""
    where: dict[str, int] = {}
    for i, sid in enumerate(source_ids):
        if sid is not None:
            where.setdefault(str(sid), i)
    out = []
    for rid in ids:
        if rid is None:
            out.append(Match(None, 0.0, "the record has no id"))
        elif str(rid) in where:
            out.append(Match(where[str(rid)]))
        else:
            out.append(Match(None, 0.0, f"id {rid!r} is not in the source records"))
    return out


def match_by_index(count: int, source_count: int) -> list[Match]:
    """The n-th record matches the n-th source record."""
    return [Match(i) if i < source_count else Match(None, 0.0, f"the source has only {source_count} records")
            for i in range(count)]


def choose_mode(mode: str, rows: Sequence[Mapping], source_rows: Sequence[Mapping]) -> str:
    """``auto`` -> ``id`` when every record of both files has an id, else ``content``."""
    if mode != "auto":
        return mode
    has_ids = all("id" in r for r in rows) and all("id" in r for r in source_rows)
    return "id" if rows and source_rows and has_ids else "content"
