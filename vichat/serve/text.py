"""From generated token ids to the text deltas a user sees: whole characters only, no stop markers.

Two small state machines, used by the local engine (token ids in) and the remote backend (text in):

:class:`IncrementalDecoder`
    Byte-level BPE (BLOOM, GPT-J) splits one Vietnamese character such as ``ệ`` (3 UTF-8 bytes)
    over several tokens; decoding a token alone gives ``"\\ufffd"``. The decoder re-decodes a short
    window of recent tokens and only emits text once it no longer ends in a replacement character,
    so a delta never holds half a character. Bytes that never form valid UTF-8 are dropped
    (``"\\ufffd"`` is never yielded).

:class:`StopFilter`
    Cuts the text at the first stop marker (``"### Instruction:"``) and holds back any tail that
    could still grow into one, so a marker that arrives split over several deltas (``"###"``,
    ``" Instr"``, ``"uction:"``) is never shown. Whitespace is trimmed at both ends: leading
    whitespace is dropped, trailing whitespace is held back until more text follows, so the answer
    never ends with the newline that precedes a marker.

The concatenation of the deltas equals :func:`final_text` of the whole decoded text, which is what
the tests check.
"""

from __future__ import annotations

from typing import Any, Sequence

REPLACEMENT = "\ufffd"


def clean(text: str) -> str:
    """``text`` without replacement characters (undecodable bytes)."""
    return text.replace(REPLACEMENT, "")


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the earliest stop marker, and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text, False) if cut < 0 else (text[:cut], True)


def final_text(decoded: str, stops: Sequence[str]) -> str:
    """What a whole generation shows: undecodable bytes dropped, cut at the first stop marker,
    whitespace stripped at both ends. The streamed deltas always add up to exactly this."""
    return cut_at_stop(clean(decoded), stops)[0].strip()


def _held_tail(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of a stop marker."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class StopFilter:
    """Text deltas in, safe text deltas out (see the module docstring)."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.pending = ""  # received but not yet shown: could be the start of a marker, or whitespace
        self.stopped = False
        self.started = False  # something was shown: whitespace is no longer leading

    def _lead(self, text: str) -> str:
        if not self.started:
            text = text.lstrip()
            self.started = bool(text)
        return text

    def push(self, delta: str) -> str:
        """Add ``delta``; return the text that is now safe to show ("" when held back or stopped)."""
        if self.stopped or not delta:
            return ""
        text = self.pending + delta
        text, self.stopped = cut_at_stop(text, self.stops)
        if self.stopped:
            self.pending = ""
            return self._lead(text.rstrip())
        keep = max(_held_tail(text, self.stops), len(text) - len(text.rstrip()))
        # Whitespace before a possible marker is held as well: "\n###" shows nothing yet.
        safe = text[: len(text) - keep]
        keep_from = len(safe.rstrip())
        self.pending = text[keep_from:]
        return self._lead(safe[:keep_from])

    def flush(self) -> str:
        """At the end of generation (EOS, length): what was held back, minus trailing whitespace.

        A partial marker at the very end (``"### Instr"``) is shown: it never became a marker."""
        if self.stopped:
            return ""
        text, self.pending = self.pending, ""
        return self._lead(text.rstrip())


class IncrementalDecoder:
    """Token ids in, whole-character text deltas out (the prefix/read-offset scheme of TGI and vLLM).

    ``decode(ids[prefix:read])`` is what was already emitted from the window; once
    ``decode(ids[prefix:])`` is longer and does not end in a replacement character, the difference is
    new, complete text. Byte-level decoding is a pure function of the bytes, so the windowed
    differences add up to the decoding of all ids.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special = skip_special_tokens
        self.ids: list[int] = []
        self.prefix = 0
        self.read = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=self.skip_special,
                                     clean_up_tokenization_spaces=False)

    def push(self, token_id: int) -> str:
        """Add one generated id; return the new complete text (possibly "")."""
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        if len(after) > len(before) and not after.endswith(REPLACEMENT):
            self.prefix, self.read = self.read, len(self.ids)
            return clean(after[len(before):])
        return ""

    def flush(self) -> str:
        """Whatever is left when generation ends (an incomplete character at the end is dropped)."""
        before = self._decode(self.ids[self.prefix:self.read])
        after = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return clean(after[len(before):]) if after.startswith(before) else ""


class TokenTextStream:
    """Ids in, user-visible deltas out: :class:`IncrementalDecoder` then :class:`StopFilter`."""

    def __init__(self, tokenizer: Any, stops: Sequence[str]) -> None:
        self.decoder = IncrementalDecoder(tokenizer)
        self.filter = StopFilter(stops)

    @property
    def stopped(self) -> bool:
        """A stop marker was seen: generation should end now."""
        return self.filter.stopped

    def push(self, token_id: int) -> str:
        return self.filter.push(self.decoder.push(token_id))

    def flush(self) -> str:
        return self.filter.push(self.decoder.flush()) + self.filter.flush()
