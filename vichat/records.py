"""The one record type every dataset is normalised into, and the errors that point at bad input."""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping


class VichatError(Exception):
    """An error a user can act on: the message says what, where and what to do."""


class InvalidRecordError(VichatError):
    """A record that cannot be read or lacks a required field.

    ``location`` is ``"path:line"`` (or ``"path:row N"`` for tabular files) so the user can open it.
    """

    def __init__(self, location: str, problem: str, hint: str = "") -> None:
        self.location = location
        self.problem = problem
        self.hint = hint or "fix the record, or pass --skip-invalid to skip and report bad records"
        super().__init__(f"{location}: {problem} ({self.hint})")


def nfc(text: str) -> str:
    """Unicode NFC: Vietnamese text arrives decomposed (``a\\u0300``) as well as composed (``à``)."""
    return unicodedata.normalize("NFC", text)


def is_nfc(text: str) -> bool:
    return unicodedata.is_normalized("NFC", text)


# C0/C1 control characters other than tab and newline, and U+FFFD (bytes a tokenizer could not
# decode, e.g. half of a 3-byte Vietnamese letter at the end of an answer).
_GARBAGE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]")


def drop_garbage(text: str) -> str:
    """``text`` without control characters (tab and newline kept) and replacement characters; safe
    on any piece of a stream (it never needs the next piece)."""
    return _GARBAGE.sub("", text)


def clean_generated(text: str) -> str:
    """Generated text as it is stored and shown: NFC, without control characters (tab and newline
    kept, ``\r\n`` becomes ``\n``) and without replacement characters."""
    return nfc(drop_garbage(text.replace("\r\n", "\n")))


@dataclass(frozen=True, slots=True)
class Record:
    """One instruction-following example.

    ``input`` is optional context for the instruction (Alpaca style); ``source`` names the dataset
    (and subset) the record came from; ``language`` is an ISO 639-1 code such as ``"vi"``.
    """

    id: str
    instruction: str
    output: str
    input: str = ""
    source: str = ""
    language: str = "vi"
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not d["meta"]:
            d.pop("meta")
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Record":
        return cls(
            id=str(d["id"]),
            instruction=d["instruction"],
            output=d["output"],
            input=d.get("input") or "",
            source=d.get("source") or "",
            language=d.get("language") or "vi",
            meta=d.get("meta") or {},
        )

    def text(self) -> str:
        return "\n".join(p for p in (self.instruction, self.input, self.output) if p)
