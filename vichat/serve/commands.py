"""`vichat models list` and `vichat models chat`: see what the app would serve, and talk to it.

Thin: each command calls :func:`vichat.serve.build_backend`; nothing heavy is imported before a
command needs it.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import asdict
from typing import Any

import click

from ..clitools import decoding_options, decoding_overrides


def models_report(config: str | None = None) -> dict:
    """The models the configuration offers, where the configuration came from, and hidden models."""
    from ..plugins import get_registry
    from . import build_backend

    backend = build_backend(config, registry=get_registry())
    return {
        "source": backend.source,
        "notes": list(backend.notes),
        "warnings": list(backend.warnings),
        "models": [{"name": m.name, "backend": m.backend, "template": m.template, "description": m.description,
                    "decoding": asdict(m.decoding)} for m in backend.models()],
    }


@click.group("models")
def models() -> None:
    """The models the demo serves (VICHAT_MODELS_CONFIG, else this machine's default)."""


@models.command("list")
@click.option("--config", type=click.Path(dir_okay=False), help="Models configuration file [default: "
              "$VICHAT_MODELS_CONFIG, else the machine's default].")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(config: str | None, as_json: bool) -> None:
    """List the configured models (loads no weights)."""
    report = models_report(config)
    if as_json:
        click.echo(json.dumps(report, ensure_ascii=False, indent=2))
        return
    click.echo(f"configuration: {report['source']}")
    for note in report["notes"]:
        click.echo(f"  {note}")
    for m in report["models"]:
        click.echo(f"{m['name']:<22} {m['backend']:<7} template={m['template']:<7} {m['description']}")
    for w in report["warnings"]:
        click.echo(f"warning: {w}", err=True)


@models.command("chat")
@click.argument("model")
@click.argument("message")
@click.option("--config", type=click.Path(dir_okay=False), help="Models configuration file.")
@decoding_options()
def chat_cmd(model: str, message: str, config: str | None, **decoding_flags: Any) -> None:
    """Stream MODEL's answer to MESSAGE (builds or loads the model first, with progress)."""
    from dataclasses import replace

    from ..plugins import get_registry
    from . import build_backend

    backend = build_backend(config, registry=get_registry())
    info = {m.name: m for m in backend.models()}.get(model)
    changes = decoding_overrides(decoding_flags)
    decoding = replace(info.decoding, **changes) if info is not None and changes else None

    def progress(stage: str, fraction: float, text: str) -> None:
        click.echo(f"[{fraction:4.0%}] {text}", err=True)

    owner = backend.backend_for(model)  # unknown names fail here, before any loading
    owner.prepare(progress)
    cancel = threading.Event()
    try:
        for delta in backend.stream(model, message, decoding=decoding, cancel=cancel):
            sys.stdout.write(delta)
            sys.stdout.flush()
    except KeyboardInterrupt:
        cancel.set()
    finally:
        sys.stdout.write("\n")
        backend.close()
