"""The public namespace for plugin authors: everything a plugin needs, from one import.

```python
from vichat.plugin import hookimpl, BaseModelSpec, Architecture, JudgeResult
```

A plugin should import from here only. What lives elsewhere in vichat may move between releases;
the names below stay. docs/plugins.md documents each of them.

- :data:`hookimpl`: the marker for hook implementations (``@hookimpl def register_judges(register)``).
- Specs (what ``register`` accepts): :class:`DatasetSpec`, :class:`BaseModelSpec` (with
  :class:`Architecture` and :class:`Decoding`), :class:`TranslatorSpec`, :class:`JudgeSpec`,
  :class:`TemplateSpec`, :class:`JudgePromptsSpec`; :data:`KINDS` maps each kind string
  (``"datasets"``, ``"base_models"``, ...) to its spec class, and :data:`FAMILIES` lists the accepted
  ``Architecture.family`` values.
- Values plugins produce or receive: :class:`Row` and :class:`Record` (datasets),
  :class:`JudgeResult`, :class:`JudgePrompt`, :class:`Reply` (judges).
- Errors a plugin may raise: :class:`VichatError` (a user-facing error: say what, where, what to do),
  :class:`SpecError` (an invalid spec), :class:`RetryableError` (429, 5xx, timeouts: retried with
  backoff), :class:`FatalTranslatorError` and :class:`FatalJudgeError` (nothing can succeed: the run
  stops cleanly, finished work cached).
- Helpers: :func:`read_rows` (JSON, JSONL, CSV, Parquet, ``save_to_disk`` folders as ``Row`` items),
  :func:`hub_rows` / :func:`url_rows` (a dataset's public source, failing fast offline),
  :func:`tag_rows` (tag rows with a subset or source name), :func:`load_base` (a registered base
  model's ``(model, tokenizer)``, through its plugin's ``load`` or vichat's loader), :func:`load_causal_lm`
  (vichat's own loader, for a plugin ``load`` that finds the files and then loads them the usual way), :func:`parse_retry_after` (seconds from
  a ``Retry-After`` header, for ``RetryableError.retry_after``) and :func:`converse` (a judge's conversation: parsing, one re-ask, aspects, rate limits).

Importing this module imports no torch, transformers or gradio.
"""

from __future__ import annotations

from typing import Any

from .hookspecs import hookimpl
from .records import Record, VichatError
from .retry import RetryableError, parse_retry_after
from .specs import (
    FAMILIES,
    KINDS,
    Architecture,
    BaseModelSpec,
    DatasetSpec,
    Decoding,
    JudgePromptsSpec,
    JudgeResult,
    JudgeSpec,
    Row,
    SpecError,
    TemplateSpec,
    TranslatorSpec,
)

# Loaded on first use: they pull in more of vichat than a plugin's import needs.
_LAZY = {
    "read_rows": ("vichat.data.readers", "read_rows"),
    "load_base": ("vichat.models", "load_base"),
    "load_causal_lm": ("vichat.models", "load_causal_lm"),
    "hub_rows": ("vichat.data.fetch", "hub_rows"),
    "url_rows": ("vichat.data.fetch", "url_rows"),
    "tag_rows": ("vichat.data.fetch", "tag_rows"),
    "converse": ("vichat.evaluate.conversation", "converse"),
    "Reply": ("vichat.evaluate.conversation", "Reply"),
    "FatalJudgeError": ("vichat.evaluate.conversation", "FatalJudgeError"),
    "JudgePrompt": ("vichat.evaluate.prompts", "JudgePrompt"),
    "FatalTranslatorError": ("vichat.translate.errors", "FatalTranslatorError"),
}

__all__ = [
    "hookimpl",
    "KINDS",
    "FAMILIES",
    "Architecture",
    "BaseModelSpec",
    "DatasetSpec",
    "Decoding",
    "JudgePromptsSpec",
    "JudgeResult",
    "JudgeSpec",
    "Record",
    "Row",
    "TemplateSpec",
    "TranslatorSpec",
    "SpecError",
    "VichatError",
    "RetryableError",
    "parse_retry_after",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vichat.plugin' has no attribute {name!r}; public names: {', '.join(__all__)}")


def __dir__() -> list[str]:
    return sorted(__all__)
