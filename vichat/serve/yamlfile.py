"""Reading a YAML configuration so every error can say ``file:line: path.to.field: what is wrong``.

:func:`compose` parses with PyYAML's node API (which keeps line numbers) into plain values plus a
map from each value's path (``("backends", 0, "models", 1, "name")``) to its line; :class:`Reader`
walks the values with typed accessors that raise :class:`ConfigError` naming the place.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

from ..records import VichatError


class ConfigError(VichatError):
    """The models configuration is invalid; the message names the file, line and field."""


def compose(text: str, source: str) -> tuple[Any, dict[tuple, int]]:
    """Parse YAML into plain values plus the line of every node (keyed by its path)."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{source}{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    lines: dict[tuple, int] = {}
    constructor = yaml.SafeLoader("")

    def convert(n: Any, path: tuple) -> Any:
        lines[path] = n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            out = {}
            for k, v in n.value:
                key = constructor.construct_object(k, deep=True)
                out[key] = convert(v, path + (key,))
            return out
        if isinstance(n, yaml.SequenceNode):
            return [convert(v, path + (i,)) for i, v in enumerate(n.value)]
        return constructor.construct_object(n, deep=True)

    return (convert(node, ()) if node is not None else None), lines


_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Reader:
    """Walks the parsed file, so every error can say ``file:line: backends[0].models[1].name``."""

    def __init__(self, source: str, lines: dict[tuple, int], base_dir: Path) -> None:
        self.source, self.lines, self.base_dir = source, lines, base_dir

    def where(self, path: tuple) -> str:
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return f"{self.source}:{self.lines[path[:n]]}"
        return self.source

    @staticmethod
    def dotted(path: tuple) -> str:
        out = ""
        for p in path:
            out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
        return out or "(top level)"

    def fail(self, path: tuple, message: str) -> ConfigError:
        return ConfigError(f"{self.where(path)}: {self.dotted(path)}: {message}")

    def expand(self, value: Any, path: tuple) -> Any:
        if not isinstance(value, str):
            return value

        def sub(m: re.Match) -> str:
            var, default = m.group(1), m.group(2)
            if var in os.environ and (os.environ[var] or default is None):
                return os.environ[var]
            if default is not None:
                return default
            raise self.fail(path, f"environment variable {var} is not set (write ${{{var}:-default}} for a default)")

        return _ENV_RE.sub(sub, value)

    def mapping(self, value: Any, path: tuple, known: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping with keys {', '.join(known)}, got {type(value).__name__}")
        for key in value:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise self.fail(path + (key,), f"unknown key {key!r}{hint}; known keys: {', '.join(known)}")
        for key in required:
            if value.get(key) in (None, ""):
                raise self.fail(path, f"{key!r} is required")
        return {k: self.expand(v, path + (k,)) for k, v in value.items()}

    def string(self, value: Any, path: tuple, choices: tuple[str, ...] = ()) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"expected a non-empty string, got {value!r}")
        if choices and value not in choices:
            raise self.fail(path, f"{value!r} is not one of {', '.join(choices)}")
        return value.strip()

    def number(self, value: Any, path: tuple, kind: type, minimum: float | None = None) -> Any:
        if isinstance(value, str):  # "${TEMPERATURE:-0.5}" arrives as text
            try:
                value = int(value) if kind is int else float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
            raise self.fail(path, f"expected {'an integer' if kind is int else 'a number'}, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(path, f"must be at least {minimum}, got {value!r}")
        return kind(value)

    def location(self, value: str) -> str:
        """A path relative to the file's folder when it names something there; else as given
        (a hub id, or a tiny adapter name)."""
        expanded = Path(value).expanduser()
        if expanded.is_absolute():
            return str(expanded)
        candidate = self.base_dir / expanded
        if value.startswith(("./", "../")) or candidate.exists():
            return str(candidate.resolve())
        return value
