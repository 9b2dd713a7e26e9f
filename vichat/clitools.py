"""Small pieces the command modules share."""

from __future__ import annotations

import logging
import warnings
from typing import Any, Callable

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


def decoding_options(default: str = "the model's") -> Callable[[Callable], Callable]:
    """One ``--max-new-tokens``, ``--temperature``, ... option per :class:`vichat.specs.Decoding`
    field, with its help text and range; unset options are None (``default`` says what applies)."""
    from .specs import decoding_fields

    def decorate(command: Callable) -> Callable:
        for f in reversed(decoding_fields()):
            low, high = f.metadata["valid"]
            kind = click.IntRange(low, high) if f.type in (int, "int") else click.FloatRange(low, high)
            command = click.option(f"--{f.name.replace('_', '-')}", f.name, type=kind, default=None,
                                   help=f"{f.metadata['help']} [default: {default}; the paper's {f.default}]")(command)
        return command

    return decorate


def decoding_overrides(values: dict[str, Any]) -> dict[str, Any]:
    """The :class:`vichat.specs.Decoding` fields a command's options set (None: not given)."""
    from .specs import decoding_fields

    return {f.name: values[f.name] for f in decoding_fields() if values.get(f.name) is not None}


#: What every command calls the folder holding a base model's weights (and tokenizer).
BASE_PATH_HELP = ("Local folder with the base model's weights and tokenizer, instead of its hub id (or of the "
                  "path an adapter recorded). The same flag on every command; `base_path:` in a models YAML.")


def base_path_option(command: Callable) -> Callable:
    """``--base-path DIR``: the one way, on every command, to say where a base model's files are."""
    return click.option("--base-path", "base_path", type=click.Path(file_okay=False), default=None,
                        help=BASE_PATH_HELP)(command)


def renamed_option(old: str, new: str, dest: str, **kwargs: Any) -> Callable[[Callable], Callable]:
    """A hidden ``old`` flag that still works for a while: it fills ``dest`` and warns to use ``new``."""

    def moved(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            click.echo(f"warning: {old} is renamed {new}; use {new} (the old name will go)", err=True)
        return value

    return click.option(old, dest, hidden=True, default=None, callback=moved, expose_value=True, **kwargs)


class _DropMessage(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def quiet_library_noise() -> None:
    """Keep Python's default warning filters (vichat's own warnings show; other libraries'
    DeprecationWarnings and ResourceWarnings do not), and drop two messages a user can do nothing
    about: peft asking transformers for a renamed attribute, and bitsandbytes advising on CPUs with
    AVX-512 BF16 to install ``kernels``, which fetches a 4-bit kernel from the hub (its own code is
    the fallback, and vichat's 4-bit CPU path is tested on it)."""
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    bnb = logging.getLogger("bitsandbytes.backends.cpu.ops")
    if not any(isinstance(f, _DropMessage) for f in bnb.filters):
        bnb.addFilter(_DropMessage("Failed to load CPU gemm_4bit_forward from kernels-community"))
