"""Small pieces the command modules share."""

from __future__ import annotations

import click


def parse_key_values(values: tuple[str, ...], flag: str = "--option") -> dict[str, str]:
    """``("model=gpt-4", "timeout=30")`` -> ``{"model": "gpt-4", "timeout": "30"}``; a bad item names the flag."""
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not key=value (e.g. {flag} model=gpt-4o-mini)", param_hint=flag)
        out[key.strip()] = value
    return out


def sigterm_as_interrupt(signum, frame) -> None:  # noqa: ANN001 - a signal handler's signature
    """Make ``kill PID`` stop a job as cleanly as Ctrl-C: finished work is kept."""
    raise KeyboardInterrupt
