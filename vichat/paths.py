"""Paths an output will be written to: what stands in the way, found before any work is done."""

from __future__ import annotations

import os
from pathlib import Path


def existing_ancestor(path: str | os.PathLike) -> Path:
    """The nearest folder-or-file above ``path`` that exists: where its missing folders would be
    created. When it is a file, no folder can be made under it (``afile/x.jsonl``)."""
    for parent in Path(path).expanduser().parents:
        if parent.exists():
            return parent
    return Path(".")


__all__ = ["existing_ancestor"]
