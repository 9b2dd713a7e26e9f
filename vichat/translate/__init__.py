"""Translation job: protection of code and placeholders, cache, batching, retries, resume.

Modules: :mod:`.protect` (markers for code, numbers, links), :mod:`.split` (long texts),
:mod:`.cache` (SQLite), :mod:`.retry` (backoff), :mod:`.engine` (batching, threads),
:mod:`.output` (ordered JSONL), :mod:`.job` (the API), :mod:`.repair` and :mod:`.matching`
(re-translating records an old translation broke), :mod:`.commands` (the CLI),
:mod:`.errors` (what plugins raise). Nothing heavy is imported until used.
"""

from __future__ import annotations

from typing import Any

_API = {
    "translate_file": "job",
    "translate_texts": "job",
    "plan_file": "job",
    "repair_file": "repair",
    "plan_repair": "repair",
    "TranslateSummary": "job",
    "TextsResult": "job",
    "TranslationCache": "cache",
    "Backoff": "retry",
    "RetryableError": "errors",
    "FatalTranslatorError": "errors",
    "ProtectionError": "errors",
    "TranslationInterrupted": "errors",
    "protect": "protect",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:  # lazy: `vichat --help` must not pay for the job modules
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(name)
