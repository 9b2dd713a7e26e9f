"""The tiny build's data, in disjoint parts, and the checks that keep them apart.

The bundled files (``vichat/data/sample/``), each written for the project:

``prose.jsonl``                 general Vietnamese prose: what the base is pretrained on (plain text)
``general.jsonl``               instruction pairs: ``vi-sample-chat``, what ``tiny-chat`` trains and
                                validates on (the trainer's validation split is cut from it)
``medical.jsonl``               patient questions: ``vi-sample-doctor``, for ``tiny-doctor``
``general_heldout.jsonl``       held-out pairs that nothing trains on: what ``vichat tiny eval``
``medical_heldout.jsonl``       reports on

No text is shared between the parts, compared after :func:`normalize` (NFC, casefold, whitespace
collapsed), and no held-out or adapter response occurs inside the pretraining text; the tests check
both, and every build also drops pretraining documents that contain adapter or held-out text
(:func:`vichat.tiny.pretrain.decontaminate`), so a ``--corpus`` of your own cannot leak them either.

Standard library only.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Iterator, Sequence

from ..data.readers import bundled_rows
from ..records import VichatError

PROSE_FILE = "prose.jsonl"
#: adapter → (training dataset file, held-out file, template, domain)
ADAPTER_DATA = {
    "tiny-chat": ("general.jsonl", "general_heldout.jsonl", "chat", "general"),
    "tiny-doctor": ("medical.jsonl", "medical_heldout.jsonl", "doctor", "medical"),
}
HELDOUT_FILES = tuple(v[1] for v in ADAPTER_DATA.values())

_SPACE = re.compile(r"\s+")


def normalize(text: str) -> str:
    """The form texts are compared in: NFC, casefolded, runs of whitespace as one space, stripped."""
    return _SPACE.sub(" ", unicodedata.normalize("NFC", text).casefold()).strip()


@dataclass(frozen=True)
class Pair:
    """One bundled instruction record."""

    id: str
    instruction: str
    input: str
    output: str
    file: str

    @property
    def message(self) -> str:
        """What a user would type in the app for this record (instruction, then input if any)."""
        return f"{self.instruction}\n\n{self.input}" if self.input else self.instruction


def _lines(name: str) -> Iterator[tuple[int, dict]]:
    return bundled_rows(f"sample/{name}")


def read_pairs(name: str) -> list[Pair]:
    """The instruction records of bundled file ``name`` (``general.jsonl``, ``medical_heldout.jsonl``...)."""
    out = []
    for lineno, row in _lines(name):
        instruction, output = str(row.get("instruction") or ""), str(row.get("output") or "")
        if not instruction.strip() or not output.strip():
            raise VichatError(f"vichat/data/sample/{name}:{lineno}: needs a non-empty instruction and output")
        out.append(Pair(str(row.get("id", f"{name}:{lineno}")), instruction, str(row.get("input") or ""),
                        output, name))
    return out


def read_prose() -> list[str]:
    """The bundled pretraining paragraphs."""
    out = []
    for lineno, row in _lines(PROSE_FILE):
        text = row.get("text")
        if not isinstance(text, str) or not text.strip():
            raise VichatError(f"vichat/data/sample/{PROSE_FILE}:{lineno}: needs a non-empty 'text'")
        out.append(text)
    return out


def heldout_pairs(adapter: str) -> list[Pair]:
    """The held-out records of ``adapter``'s domain (nothing trains on them)."""
    return read_pairs(ADAPTER_DATA[adapter][1])


def protected_texts(adapters: Sequence[str] = tuple(ADAPTER_DATA)) -> list[str]:
    """Every instruction, input and response the adapters train, validate or are evaluated on: the
    texts the base must never see."""
    out: list[str] = []
    for name in adapters:
        train_file, heldout_file = ADAPTER_DATA[name][:2]
        for pair in read_pairs(train_file) + read_pairs(heldout_file):
            out.extend(t for t in (pair.instruction, pair.input, pair.output) if t)
    return out


__all__ = ["ADAPTER_DATA", "HELDOUT_FILES", "PROSE_FILE", "Pair", "heldout_pairs", "normalize", "protected_texts",
           "read_pairs", "read_prose"]
