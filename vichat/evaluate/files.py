"""Reading and writing the FastChat-format files evaluation uses: questions, answers, reviews.

Questions: ``{"question_id", "text", "category"?}``. Answers: ``{"question_id", "text",
"answer_id", "model_id", "metadata"?}``. A line that is not a JSON object, lacks a field or repeats
a question id is an error naming ``path:line``: bad input never becomes a silently missing row.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from ..paths import existing_ancestor
from ..records import VichatError, nfc

_ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # shortuuid's, as FastChat's ids


def short_id(*parts: Any) -> str:
    """A stable 22-character id (FastChat uses random shortuuids; a hash keeps reruns identical)."""
    n = int(hashlib.sha256(json.dumps(parts, ensure_ascii=False, default=str).encode("utf-8")).hexdigest(), 16)
    out = []
    for _ in range(22):
        n, r = divmod(n, len(_ALPHABET))
        out.append(_ALPHABET[r])
    return "".join(out)


#: ``--set`` names and their files under ``$VICHAT_SHARED_DATA/eval``, with the default template
#: and the category given to questions that carry none.
SETS: dict[str, tuple[str, str, str]] = {
    "vicuna80-vi": ("vicuna80_questions_vi.jsonl", "chat", "general"),
    "vicuna80-en": ("vicuna80_questions_en.jsonl", "chat", "general"),
    "icliniq100-vi": ("icliniq100_questions_vi.jsonl", "doctor", "medical"),
}


def shared_eval_dir() -> Path:
    """``$VICHAT_SHARED_DATA/eval``; without the variable, ``../shared/data/eval`` from here."""
    return Path(os.environ.get("VICHAT_SHARED_DATA") or Path("..") / "shared" / "data") / "eval"


def set_path(name: str) -> Path:
    """The questions file of a named set; an unknown name lists the known ones."""
    if name not in SETS:
        raise VichatError(f"no question set {name!r}; known sets: {', '.join(SETS)} (or pass --questions PATH)")
    path = shared_eval_dir() / SETS[name][0]
    if not path.exists():
        raise VichatError(f"{path}: question set {name!r} not found; set VICHAT_SHARED_DATA or pass --questions PATH")
    return path


def read_jsonl(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``("path:line", object)`` for each non-empty line (through the data package's reader, so a
    ``.json`` list works too); an unreadable line is an error naming ``path:line``."""
    from ..data.readers import Unreadable, read_rows

    path = Path(path)
    if not path.is_file():
        raise VichatError(f"{path}: no such file")
    for row in read_rows(path):
        if isinstance(row.data, Unreadable):
            raise VichatError(f"{row.location}: {row.data.problem}")
        yield row.location, dict(row.data)


def _need(where: str, obj: dict, *fields: str) -> None:
    missing = [f for f in fields if f not in obj]
    if missing:
        raise VichatError(f"{where}: missing field {', '.join(repr(m) for m in missing)}")


@dataclass(frozen=True)
class Question:
    question_id: int | str
    text: str
    category: str


@dataclass(frozen=True)
class Answer:
    question_id: int | str
    text: str
    answer_id: str
    model_id: str
    where: str
    #: What ``vichat eval generate`` recorded in ``metadata``: the question set it answered and a
    #: fingerprint of the question's text (``None`` in older or hand-made files).
    question_set: str | None = None
    question_fingerprint: str | None = None


def question_fingerprint(text: str) -> str:
    """A short hash of a question's (NFC) text: which question an answer was generated for."""
    return hashlib.sha256(nfc(str(text)).encode("utf-8")).hexdigest()[:16]


def set_name_for(path: str | Path) -> str:
    """The ``--set`` name of a questions file (by its file name), else the file's name."""
    name = Path(path).name
    for set_name, (file, _, _) in SETS.items():
        if file == name:
            return set_name
    return name


def template_for(path: str | Path) -> str:
    """The default template for a questions file: its set's (``doctor`` for iCliniq), else ``chat``."""
    name = Path(path).name
    return next((template for file, template, _ in SETS.values() if file == name), "chat")


def check_out_path(path: str | Path, flag: str = "--out") -> Path:
    """Refuse an output path that cannot be written (a folder, or under a regular file) before any
    work is done: a model load or paid judgments must not end in a traceback at the write."""
    path = Path(path)
    if path.is_dir():
        raise VichatError(f"{flag} {path}: is a folder; give a file path")
    parent = existing_ancestor(path)
    if not parent.is_dir():
        raise VichatError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise VichatError(f"{flag} {path}: cannot write in {parent}")
    return path


def load_questions(path: str | Path, default_category: str = "general") -> dict[Any, Question]:
    """Questions by id, in file order."""
    out: dict[Any, Question] = {}
    for where, obj in read_jsonl(path):
        _need(where, obj, "question_id", "text")
        qid = obj["question_id"]
        if qid in out:
            raise VichatError(f"{where}: question_id {qid!r} appears twice")
        out[qid] = Question(qid, nfc(str(obj["text"])), str(obj.get("category") or default_category))
    if not out:
        raise VichatError(f"{path}: no questions")
    return out


def load_answers(path: str | Path) -> dict[Any, Answer]:
    """Answers by question id; ``model_id`` defaults to the file's stem."""
    out: dict[Any, Answer] = {}
    for where, obj in read_jsonl(path):
        _need(where, obj, "question_id", "text")
        qid = obj["question_id"]
        if qid in out:
            raise VichatError(f"{where}: a second answer for question_id {qid!r} (first at {out[qid].where})")
        text = obj["text"] if isinstance(obj["text"], str) else ""
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        fingerprint = meta.get("question_fingerprint")
        out[qid] = Answer(qid, nfc(text), str(obj.get("answer_id") or f"{Path(path).stem}-{qid}"),
                          str(obj.get("model_id") or Path(path).stem), where,
                          question_set=str(meta["question_set"]) if meta.get("question_set") else None,
                          question_fingerprint=str(fingerprint) if fingerprint else None)
    return out


def default_category(path: str | Path) -> str:
    """The category for questions without one: ``medical`` for the iCliniq set, else ``general``."""
    name = Path(path).name
    for file, _, category in SETS.values():
        if file == name:
            return category
    return "general"


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    """Write ``rows`` as JSON Lines atomically (a temporary file renamed over ``path``); returns the count."""
    from ..data.prepare import write_text_atomic

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows]
    write_text_atomic(path, "".join(lines))
    return len(lines)
