"""`vichat data ...`: list, show, stats and prepare instruction datasets.

Thin wrappers: each command calls a function of :mod:`vichat.data.loading`, ``.stats``,
``.mixtures`` or ``.prepare`` (imported inside the command so ``vichat --help`` stays fast) and
prints its counts; nothing is dropped without being reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ..clitools import base_path_option, renamed_option
from .tokenize import MAX_LENGTH

SUBSET_HELP = "Subset of a registered dataset (also written NAME:SUBSET)."
PATH_HELP = "Local file or folder with the dataset's data, instead of downloading its public source."
SKIP_HELP = "Skip records that cannot be read or lack a required field, and report them (default: stop at the first)."


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


def dataset_rows(registry: Any = None) -> list[dict[str, Any]]:
    """One dict per registered dataset: name, languages, domain, subsets, source, licence, plugin."""
    from ..plugins import get_registry

    registry = registry or get_registry()
    return [
        {
            "name": spec.name,
            "description": spec.description,
            "languages": list(spec.languages),
            "domain": spec.domain,
            "subsets": list(spec.subsets),
            "source": spec.source,
            "homepage": spec.homepage,
            "license": spec.license,
            "plugin": registry.owner("datasets", spec.name),
        }
        for spec in registry.all("datasets")
    ]


@click.group()
def data() -> None:
    """Instruction datasets: list, show, stats, prepare."""


@data.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(as_json: bool) -> None:
    """List registered datasets and the built-in mixtures."""
    from .mixtures import MIXTURES

    rows = dataset_rows()
    mixtures = [
        {"name": m.name, "description": m.description, "template": m.template,
         "sources": {s.key: s.dataset for s in m.sources}}
        for m in MIXTURES.values()
    ]
    if as_json:
        _echo_json({"datasets": rows, "mixtures": mixtures})
        return
    for r in rows:
        subsets = f" [subsets: {', '.join(r['subsets'])}]" if r["subsets"] else ""
        click.echo(f"{r['name']}  ({'/'.join(r['languages'])}, {r['domain']}){subsets}")
        click.echo(f"    {r['description']}")
        click.echo(f"    source: {r['source']}")
        click.echo(f"    licence: {r['license'] or 'not stated'}")
    click.echo("\nmixtures:")
    for m in mixtures:
        parts = " + ".join(f"{k}={v}" for k, v in m["sources"].items())
        click.echo(f"  {m['name']}: {parts}  (template {m['template']})")


@data.command("show")
@click.argument("name_or_path")
@click.option("-n", "count", type=click.IntRange(min=0), default=3, show_default=True, help="Records to print.")
@click.option("--path", "path", type=click.Path(), default=None, help=PATH_HELP)
@click.option("--subset", default=None, help=SUBSET_HELP)
@click.option("--skip-invalid", is_flag=True, help=SKIP_HELP)
def show_cmd(name_or_path: str, count: int, path: str | None, subset: str | None, skip_invalid: bool) -> None:
    """Print the first records of a dataset (JSON lines) and its load counts (on stderr)."""
    from ..plugins import get_registry
    from .loading import load

    result = load(name_or_path, path=path, subset=subset, skip_invalid=skip_invalid, registry=get_registry())
    for record in result.records[:count]:
        click.echo(record.to_json())
    click.echo(result.summary(), err=True)


@data.command("stats")
@click.argument("name_or_path")
@click.option("--path", "path", type=click.Path(), default=None, help=PATH_HELP)
@click.option("--subset", default=None, help=SUBSET_HELP)
@click.option("--base-model", default=None,
              help="Registered base-model name or hub id whose tokenizer counts the tokens (default: vichat's default "
                   "tokenizer).")
@base_path_option
@renamed_option("--tokenizer", "--base-model NAME or --base-path DIR", "tokenizer")
@click.option("--template", default="chat", show_default=True, help="Prompt template the samples are rendered with.")
@click.option("--max-length", type=click.IntRange(min=1), default=MAX_LENGTH, show_default=True,
              help="Training sequence length; longer samples count as truncated.")
@click.option("--skip-invalid", is_flag=True, help=SKIP_HELP)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def stats_cmd(name_or_path: str, path: str | None, subset: str | None, base_model: str | None,
              base_path: str | None, tokenizer: str | None, template: str, max_length: int, skip_invalid: bool,
              as_json: bool) -> None:
    """Samples, tokens per sample (avg, p95), total tokens, truncation, non-NFC, untranslated and
    broken-code counts (records whose code machine translation turned Vietnamese)."""
    from .loading import load
    from .stats import compute_stats, format_stats
    from .tokenizers import load_tokenizer

    from ..plugins import get_registry

    registry = get_registry()
    result = load(name_or_path, path=path, subset=subset, skip_invalid=skip_invalid, registry=registry)
    if tokenizer is not None and base_model is None and base_path is None:  # the old flag: a folder or a name
        base_path, base_model = (tokenizer, None) if Path(tokenizer).expanduser().is_dir() else (None, tokenizer)
    tok = load_tokenizer(base_model, registry=registry, base_path=base_path)
    stats = compute_stats(result, tok, template=registry.template(template), max_length=max_length,
                          tokenizer_name=base_path or base_model or "default")
    if as_json:
        _echo_json({**stats.to_dict(), "skipped": result.skipped.to_dict()})
        return
    click.echo(format_stats(stats))
    if result.skipped.count:
        click.echo("  " + result.skipped.describe())


@data.command("prepare")
@click.option("--mixture", default=None, help="Built-in mixture: chat, doctor, sample-chat, sample-doctor.")
@click.option("--dataset", "datasets", multiple=True, help="Dataset name or path (repeatable; instead of --mixture).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--val-size", default="0.02", show_default=True, help="Validation share (0.02) or count (500).")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed for limits, shuffling and the split.")
@click.option("--limit", "limits", multiple=True, metavar="KEY=N", help="Cap a source, e.g. alpaca=1000 (repeatable).")
@click.option("--source", "sources", multiple=True, metavar="KEY=PATH",
              help="Replace a source's data by a local file/folder or another dataset (repeatable).")
@click.option("--template", default=None, help="Template recorded for training (default: the mixture's).")
@click.option("--skip-invalid", is_flag=True, help=SKIP_HELP)
@click.option("--keep-corrupted-code", is_flag=True,
              help="Keep records whose code machine translation broke (default: drop them and list them in skipped.jsonl).")
@click.option("--drop-untranslated", is_flag=True,
              help="Also drop Vietnamese-set records that look like untranslated English (listed in skipped.jsonl).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def prepare_cmd(mixture: str | None, datasets: tuple[str, ...], out: str, val_size: str, seed: int,
                limits: tuple[str, ...], sources: tuple[str, ...], template: str | None, skip_invalid: bool,
                keep_corrupted_code: bool, drop_untranslated: bool, as_json: bool) -> None:
    """Write OUT/train.jsonl, OUT/validation.jsonl and OUT/manifest.json from a mixture or datasets.

    Records whose code the translation broke (Python, JavaScript, SQL, HTML, CSS with Vietnamese
    words in place of keywords) are dropped and written with their reason to OUT/skipped.jsonl.
    """
    from ..plugins import get_registry
    from .mixtures import parse_assignments, parse_limits
    from .prepare import prepare, summarise

    manifest = prepare(
        out,
        mixture=mixture,
        datasets=datasets,
        sources=parse_assignments(sources, "source"),
        limits=parse_limits(limits),
        val_size=val_size,
        seed=seed,
        skip_invalid=skip_invalid,
        template=template,
        keep_corrupted_code=keep_corrupted_code,
        drop_untranslated=drop_untranslated,
        registry=get_registry(),
    )
    if as_json:
        _echo_json(manifest)
    else:
        click.echo(summarise(manifest))
        click.echo(f"wrote {out}/train.jsonl, {out}/validation.jsonl, {out}/manifest.json")
