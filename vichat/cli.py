"""`vichat ...`: a thin command line. Every command calls a function tests can call too.

Command modules import only click and the standard library at import time, so ``vichat --help``
stays fast; torch, transformers and friends load inside the commands that need them.
"""

from __future__ import annotations

import json
import sys
import warnings

import click

from .clitools import quiet_library_noise
from .records import VichatError


class VichatGroup(click.Group):
    """Turns :class:`VichatError` into a one-line message and exit code 2, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except VichatError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=VichatGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vichat")
def main() -> None:
    """vichat: Vietnamese instruction-tuned chatbots (data, training, judging, demo)."""
    quiet_library_noise()
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"  # type: ignore[assignment]


def plugins_report(registry=None) -> list[dict]:
    """Every loaded plugin with its distribution, version, and the names it registers."""
    from .plugins import get_registry

    registry = registry or get_registry()
    return [info.to_dict() for info in registry.plugins.values()]


@main.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_cmd(as_json: bool) -> None:
    """List installed plugins and what each registers."""
    from .plugins import NameConflictError, get_registry

    registry = get_registry()
    report = plugins_report(registry)
    conflicts = [str(NameConflictError(k, n, o)) for (k, n), o in registry.conflicts.items()]
    if as_json:
        click.echo(json.dumps({"plugins": report, "conflicts": conflicts}, ensure_ascii=False, indent=2))
    else:
        for p in report:
            dist = f"{p['distribution']} {p['version']}".strip()
            click.echo(f"{p['name']}  ({dist}; {p['module']})")
            for kind, names in p["registered"].items():
                if names:
                    shown = [f"{n} (CONFLICT)" if (kind, n) in registry.conflicts else n for n in names]
                    click.echo(f"    {kind.replace('_', ' ')}: {', '.join(shown)}")
            for err in p["errors"]:
                click.echo(f"    ERROR: {err}")
        for c in conflicts:
            click.echo(f"error: {c}", err=True)
    if conflicts:
        sys.exit(1)


def _add_optional_commands() -> None:
    # Each feature module owns its commands; they are attached here so `vichat --help` lists all.
    from .app.commands import arena, serve
    from .data.commands import data
    from .evaluate.commands import eval_group
    from .serve.commands import models
    from .train.commands import train
    from .train.export_commands import export
    from .tiny.commands import tiny
    from .translate.commands import translate

    main.add_command(data)
    main.add_command(translate)
    main.add_command(train)
    main.add_command(export)
    main.add_command(tiny)
    main.add_command(eval_group)
    main.add_command(serve)
    main.add_command(arena)
    main.add_command(models)


_add_optional_commands()

if __name__ == "__main__":  # pragma: no cover
    main()
