"""Language heuristics for Vietnamese instruction data: diacritics, untranslated English, detection.

The rules are the ones ``shared/data/MANIFEST.md`` uses to count its files, so ``vichat data stats``
reproduces its numbers:

* a text *is Vietnamese* when it contains at least one Vietnamese diacritic letter (ă â đ ê ô ơ ư or
  a tone-marked vowel);
* a text *looks untranslated* (English left in a Vietnamese set) when it has no Vietnamese
  diacritics, at least 4 Latin words, and an English stop-word ratio of at least 0.12.

The MANIFEST does not publish its word definition or stop-word list. Here a Latin word is a run of
2+ ASCII letters and the list is a short NLTK-style one; on ``vi_alpaca_gpt4vn.jsonl`` that flags
35 records (code and English titles) where the MANIFEST reports 28.

Everything here is pure standard library, cheap enough to run over every record.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable

# Base vowels that take Vietnamese tone marks, and the five tone marks (grave, acute, hook above,
# tilde, dot below). Composed with NFC they give every tone-marked vowel, upper and lower case.
_VOWELS = "aăâeêioôơuưy"
_TONES = ("\u0300", "\u0301", "\u0309", "\u0303", "\u0323")
_LETTERS = {unicodedata.normalize("NFC", v + t) for v in _VOWELS for t in _TONES} | set("ăâđêôơư")
VIETNAMESE_LETTERS: frozenset[str] = frozenset(_LETTERS | {c.upper() for c in _LETTERS})
_VI_RE = re.compile("[" + "".join(sorted(VIETNAMESE_LETTERS)) + "]")
# A "Latin word" is a run of two or more ASCII letters between word boundaries: single letters are
# variable names, musical notes or list markers ("A B C D"), not evidence of English prose.
_LATIN_WORD_RE = re.compile(r"\b[A-Za-z]{2,}\b")

#: Common English function words (a short NLTK-style list). Content words are deliberately absent:
#: a stop-word ratio measures whether the text is English *prose*, not whether it has English terms.
ENGLISH_STOP_WORDS: frozenset[str] = frozenset(
    """about above after again against all am an and any are as at be because been before being
    below between both but by can could did do does doing down during each few for from further
    had has have having he her here hers herself him himself his how if in into is it its itself
    just me more most my myself no nor not now of off on once only or other our ours ourselves out
    over own same she should so some such than that the their theirs them themselves then there
    these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours yourself yourselves don doesn isn aren
    wasn weren won""".split()
)

MIN_LATIN_WORDS = 4
MIN_STOP_WORD_RATIO = 0.12


def has_vietnamese(text: str) -> bool:
    """True when ``text`` contains a Vietnamese diacritic letter (checked on its NFC form)."""
    if _VI_RE.search(text):
        return True
    # Decomposed input (a + U+0300) only matches after composing; skip the work for plain ASCII.
    return not text.isascii() and bool(_VI_RE.search(unicodedata.normalize("NFC", text)))


def looks_untranslated(text: str) -> bool:
    """True when ``text`` looks like English left untranslated (the MANIFEST's rule)."""
    if has_vietnamese(text):
        return False
    words = _LATIN_WORD_RE.findall(text)
    if len(words) < MIN_LATIN_WORDS:
        return False
    stops = sum(1 for w in words if w.lower() in ENGLISH_STOP_WORDS)
    return stops / len(words) >= MIN_STOP_WORD_RATIO


def record_looks_untranslated(prompt: str, response: str) -> bool:
    """A record counts as untranslated when its prompt or its response looks untranslated."""
    return looks_untranslated(prompt) or looks_untranslated(response)


def detect_language(texts: Iterable[str], threshold: float = 0.3) -> str:
    """``"vi"`` when at least ``threshold`` of the non-empty texts are Vietnamese, else ``"en"``.

    Used on a sample of a dataset whose language is not known (a plain file, the ``alpaca``
    dataset read from a path). Per-dataset rather than per-record: a Vietnamese set keeps short
    diacritic-free answers ("42", code) as Vietnamese records.
    """
    total = vi = 0
    for text in texts:
        if not text:
            continue
        total += 1
        vi += has_vietnamese(text)
    if total == 0:
        return "vi"
    return "vi" if vi / total >= threshold else "en"
