"""How many records a run trains on and how long they are, without a tokenizer if need be.

From a prepared data dir (``DIR/train.jsonl``, written by `vichat data prepare`): the line count and
the mean length of a sample of records. Otherwise the paper's Table I for the built-in mixtures.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..records import VichatError

#: Table I of the paper: samples and average tokens per sample.
PAPER_DATA: dict[str, tuple[int, int]] = {
    "alpaca": (52_000, 350),
    "gpt4all": (150_000, 365),
    "chatdoctor": (200_000, 405),
}
MIXTURES: dict[str, tuple[str, ...]] = {"chat": ("alpaca", "gpt4all"), "doctor": ("alpaca", "chatdoctor")}
#: The bundled sample (vichat/data/sample): its mixtures and datasets, read in place.
SAMPLE_DIR = Path(__file__).resolve().parents[1] / "data" / "sample"
BUNDLED: dict[str, tuple[str, ...]] = {
    "sample-chat": ("general.jsonl",),
    "sample-doctor": ("general.jsonl", "medical.jsonl"),
    "vi-sample-chat": ("general.jsonl",),
    "vi-sample-doctor": ("medical.jsonl",),
}

#: Rough tokens per whitespace-separated word (Vietnamese syllables and English words alike);
#: the paper's tokenizers are not at hand offline. Pass --avg-tokens to override.
TOKENS_PER_WORD = 1.5
#: Tokens the prompt template adds around each record (the paper's templates are ~20-30 tokens).
TEMPLATE_TOKENS = 25
SAMPLE = 2000


@dataclass(frozen=True)
class DataStats:
    """Record count and mean tokens per record (None when unknown) and where they came from."""

    records: int | None
    avg_tokens: float | None
    source: str


def heuristic_tokens(text: str) -> int:
    """A tokenizer-free token estimate: ``1.5 x words``."""
    return round(TOKENS_PER_WORD * len(text.split()))


def _record_text(row: dict) -> str:
    keys = ("instruction", "input", "output", "prompt", "response")
    return " ".join(str(row.get(k) or "") for k in keys)


def _count_lines(path: Path) -> int:
    n, last = 0, b"\n"
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def file_stats(path: Path, count_tokens: Callable[[str], int] | None = None, sample: int = SAMPLE) -> DataStats:
    """Records in a JSONL file (non-empty lines) and mean tokens over its first ``sample`` records."""
    records = _count_lines(path)
    counter = count_tokens or heuristic_tokens
    total = seen = 0
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                records -= 1
                continue
            if seen >= sample:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise VichatError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            total += counter(_record_text(row)) + TEMPLATE_TOKENS
            seen += 1
    how = "tokenizer" if count_tokens else f"~{TOKENS_PER_WORD} tokens/word heuristic"
    avg = total / seen if seen else None
    return DataStats(records, avg, f"{path} ({how}, first {min(seen, sample)} records)")


def data_stats(data: str, count_tokens: Callable[[str], int] | None = None) -> DataStats:
    """Stats for ``data``: a prepared dir, a JSONL file, a paper mixture or dataset name, or unknown."""
    p = Path(data)
    if p.is_dir():
        train = p / "train.jsonl"
        if not train.is_file():
            raise VichatError(f"{p}: no train.jsonl here; create it with `vichat data prepare --out {p}`")
        return file_stats(train, count_tokens)
    if p.is_file():
        return file_stats(p, count_tokens)
    if data in BUNDLED and all((SAMPLE_DIR / f).is_file() for f in BUNDLED[data]):
        parts_stats = [file_stats(SAMPLE_DIR / f, count_tokens) for f in BUNDLED[data]]
        n = sum(s.records or 0 for s in parts_stats)
        tokens = sum((s.records or 0) * (s.avg_tokens or 0) for s in parts_stats)
        return DataStats(n, tokens / n if n else None,
                         f"bundled sample {' + '.join(BUNDLED[data])}, before the validation split")
    parts = MIXTURES.get(data) or ((data,) if data in PAPER_DATA else None)
    if parts:
        n = sum(PAPER_DATA[x][0] for x in parts)
        tokens = sum(PAPER_DATA[x][0] * PAPER_DATA[x][1] for x in parts)
        desc = " + ".join(f"{x} {PAPER_DATA[x][0] // 1000}k x {PAPER_DATA[x][1]}" for x in parts)
        return DataStats(n, tokens / n, f"paper Table I: {desc}, before the validation split")
    return DataStats(None, None, f"{data!r} is not a prepared data dir; pass --records/--avg-tokens or a dir")
