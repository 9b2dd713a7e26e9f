"""Dataset statistics: the paper's Table I columns plus data-quality counts.

Token counts follow the training contract of :mod:`vichat.data.tokenize`: a sample is
``[BOS?] + encode(template prompt) + encode(response) + [EOS]``, the prompt rendered with
:func:`vichat.data.templates.render_prompt` (``chat`` template by default). So "tokens per sample" is
the length of the sequence training would see before truncation, and "truncated" is the share of
samples longer than ``max_length`` (the paper trains at 512).

Percentiles are nearest-rank: p95 is the smallest length that at least 95 % of samples do not
exceed (always an observed length).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from ..records import Record
from ..specs import TemplateSpec
from .language import record_looks_untranslated
from .loading import LoadResult
from .quality import record_code_problems
from .templates import render_prompt
from .tokenize import MAX_LENGTH, resolve_template

BATCH_SIZE = 1000  # fast tokenizers encode a list in parallel; 1000 keeps memory flat


@dataclass(frozen=True)
class DatasetStats:
    """One row of the statistics table (``to_dict`` for ``--json``)."""

    name: str
    records: int
    avg_tokens: float
    p95_tokens: int
    max_tokens: int
    total_tokens: int
    truncated: int
    truncated_share: float
    max_length: int
    template: str
    tokenizer: str
    non_nfc: int
    untranslated: int
    untranslated_share: float
    corrupted_code: int
    corrupted_code_share: float
    corrupted_code_first: list[str]
    read: int
    skipped_invalid: int
    duplicates_removed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def percentile(values: Sequence[int], q: float) -> int:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; 0 for no values."""
    if not values:
        return 0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def token_lengths(records: Sequence[Record], tokenizer: Any, template: TemplateSpec | str = "chat") -> list[int]:
    """Training-sequence length of each record (prompt + response + EOS, BOS when the tokenizer adds one).

    ``tokenizer`` is a Hugging Face tokenizer (anything callable as
    ``tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]``).
    """
    tpl = resolve_template(template)
    adds_bos = bool(getattr(tokenizer, "add_bos_token", False)) and getattr(tokenizer, "bos_token_id", None) is not None
    extra = int(getattr(tokenizer, "eos_token_id", None) is not None) + int(adds_bos)
    out: list[int] = []
    for start in range(0, len(records), BATCH_SIZE):
        batch = records[start : start + BATCH_SIZE]
        # Prompt and response are encoded separately, exactly as tokenize_record does.
        prompts = _encode(tokenizer, [render_prompt(tpl, r.instruction, r.input) for r in batch])
        responses = _encode(tokenizer, [r.output for r in batch])
        out.extend(len(p) + len(r) + extra for p, r in zip(prompts, responses))
    return out


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]


def compute_stats(
    result: LoadResult,
    tokenizer: Any,
    *,
    template: TemplateSpec | str = "chat",
    max_length: int = MAX_LENGTH,
    tokenizer_name: str = "",
) -> DatasetStats:
    """Statistics of a loaded dataset (see the module docstring for what each number means)."""
    tpl = resolve_template(template)
    lengths = token_lengths(result.records, tokenizer, tpl)
    n = len(lengths)
    total = sum(lengths)
    truncated = sum(1 for x in lengths if x > max_length)
    untranslated = sum(
        1 for r in result.records if record_looks_untranslated(f"{r.instruction}\n{r.input}", r.output)
    )
    corrupted, first = code_corruption(result.records)
    return DatasetStats(
        name=result.name,
        records=n,
        avg_tokens=round(total / n, 2) if n else 0.0,
        p95_tokens=percentile(lengths, 95),
        max_tokens=max(lengths, default=0),
        total_tokens=total,
        truncated=truncated,
        truncated_share=round(truncated / n, 4) if n else 0.0,
        max_length=max_length,
        template=tpl.name,
        tokenizer=tokenizer_name or getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
        non_nfc=result.non_nfc,
        untranslated=untranslated,
        untranslated_share=round(untranslated / n, 4) if n else 0.0,
        corrupted_code=corrupted,
        corrupted_code_share=round(corrupted / n, 4) if n else 0.0,
        corrupted_code_first=first,
        read=result.read,
        skipped_invalid=result.skipped_invalid,
        duplicates_removed=result.duplicates_removed,
    )


def code_corruption(records: Sequence[Record], examples: int = 3) -> tuple[int, list[str]]:
    """How many records have code that translation broke, and where the first ones are
    (``"vi-alpaca-4187 py-for at output line 1: 'cho x trong ...'"``)."""
    count, first = 0, []
    for r in records:
        hits = record_code_problems(r)
        if hits:
            count += 1
            if len(first) < examples:
                first.append(f"{r.id} {hits[0].describe()}")
    return count, first


def _human(n: float) -> str:
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(int(n))


def format_stats(stats: DatasetStats) -> str:
    """A small two-column table; the first three lines are the paper's Table I columns."""
    pct = lambda x: f"{100 * x:.1f}%"  # noqa: E731
    rows = [
        ("Samples", f"{stats.records} ({_human(stats.records)})"),
        ("Avg. tokens/sample", f"{stats.avg_tokens:.1f}"),
        ("Tokens", f"{stats.total_tokens} ({_human(stats.total_tokens)})"),
        ("p95 tokens/sample", str(stats.p95_tokens)),
        ("max tokens/sample", str(stats.max_tokens)),
        (f"truncated at {stats.max_length}", f"{stats.truncated} ({pct(stats.truncated_share)})"),
        ("non-NFC records (raw)", str(stats.non_nfc)),
        ("looks untranslated", f"{stats.untranslated} ({pct(stats.untranslated_share)})"),
        ("code broken by translation", f"{stats.corrupted_code} ({pct(stats.corrupted_code_share)})"),
        ("read / skipped / duplicates", f"{stats.read} / {stats.skipped_invalid} / {stats.duplicates_removed}"),
        ("template / tokenizer", f"{stats.template} / {stats.tokenizer}"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"dataset: {stats.name}"] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
    if stats.corrupted_code_first:
        lines.append("  first records with broken code:")
        lines.extend(f"    {where[:150]}" for where in stats.corrupted_code_first)
    return "\n".join(lines)
