"""`vichat translate`: a thin command over :func:`vichat.translate.job.translate_file`.

Only click and the standard library are imported here at import time, so ``vichat --help``
stays fast; the job modules load when the command runs.
"""

from __future__ import annotations

import signal
import sys
from typing import Any, Callable

import click

from ..clitools import parse_key_values, sigterm_as_interrupt


def format_plan(plan) -> list[str]:  # noqa: ANN001 - engine.Plan, imported lazily
    """The ``--dry-run`` table."""
    rows = [
        ("records", f"{plan.records:,}"),
        ("segments", f"{plan.segments:,} ({plan.cached:,} cached, {plan.skipped:,} with nothing to translate)"),
        ("to send", f"{plan.to_send:,} segments as {plan.chunks:,} unique texts"),
        ("characters", f"{plan.characters:,}"),
        ("requests", f"{plan.requests:,} (at most {plan.batch_size} texts / {plan.batch_chars:,} characters each)"),
        ("estimated cost", f"${plan.cost:,.2f} at ${plan.cost_per_million_chars:g} per million characters ({plan.translator})"),
    ]
    width = max(len(k) for k, _ in rows)
    out = ["dry run: nothing was sent"] + [f"  {k.ljust(width)}  {v}" for k, v in rows]
    if plan.missing_env:
        out.append(f"  note: set {', '.join(plan.missing_env)} before the real run")
    return out


@click.command()
@click.argument("input", type=click.Path(exists=True, dir_okay=True))
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--translator", "-t", required=True, help="Translator name (see `vichat plugins`): google, openai, identity...")
@click.option("--source", default="en", show_default=True, help="Source language code.")
@click.option("--target", default="vi", show_default=True, help="Target language code.")
@click.option("--fields", default="instruction,input,output", show_default=True, help="Comma-separated fields to translate; others are copied.")
@click.option("--concurrency", "-j", default=8, show_default=True, type=click.IntRange(1, 256), help="Requests in flight at once.")
@click.option("--option", "-o", "option_values", multiple=True, metavar="KEY=VALUE", help="Translator option, e.g. model=gpt-4o-mini or timeout=30 (repeatable).")
@click.option("--dry-run", is_flag=True, help="Print characters, requests and estimated cost; send nothing.")
@click.option("--limit", type=click.IntRange(0), default=None, help="Only the first N records.")
@click.option("--cache", "cache_path", type=click.Path(dir_okay=False), default=None, help="Cache file [default: $VICHAT_CACHE_DIR/translate.sqlite].")
@click.option("--batch-size", type=click.IntRange(1), default=None, help="At most N texts per request (never above the translator's limit).")
@click.option("--batch-chars", type=click.IntRange(1), default=None, help="At most N characters per request (never above the translator's limit).")
@click.option("--retries", type=click.IntRange(0), default=6, show_default=True, help="Retries per request on 429, 5xx and timeouts.")
@click.option("--backoff-base", type=click.FloatRange(0), default=0.5, show_default=True, help="First retry waits up to this many seconds; doubles each retry.")
@click.option("--backoff-max", type=click.FloatRange(0), default=30.0, show_default=True, help="Longest wait between retries (a server's Retry-After wins).")
@click.option("--code-lines/--no-code-lines", default=True, show_default=True, help="Also protect unfenced lines that look like code.")
@click.option("--progress/--no-progress", default=None, help="Progress bar [default: when stderr is a terminal].")
@click.option("--repair", is_flag=True,
              help="INPUT is an old translation: re-translate only its records whose code the translation broke, "
                   "from their English originals in --source-records, and write INPUT with them repaired to OUTPUT.")
@click.option("--source-records", type=click.Path(exists=True), default=None,
              help="With --repair: the English originals (e.g. Alpaca's alpaca_data.json).")
@click.option("--match", "match", type=click.Choice(["auto", "id", "index", "content"]), default="auto", show_default=True,
              help="With --repair: how a record finds its original: equal 'id' fields, the same position, or shared "
                   "numbers/code/names ('content'); auto = id when both files have ids, else content.")
def translate(
    input: str, output: str, translator: str, source: str, target: str, fields: str, concurrency: int,
    option_values: tuple[str, ...], dry_run: bool, limit: int | None, cache_path: str | None,
    batch_size: int | None, batch_chars: int | None, retries: int, backoff_base: float,
    backoff_max: float, code_lines: bool, progress: bool | None, repair: bool, source_records: str | None,
    match: str,
) -> None:
    """Translate FIELDS of every record in INPUT (JSONL, JSON, CSV, Parquet) into OUTPUT (JSONL).

    Code, URLs, e-mail addresses, numbers and placeholders come back unchanged. Every finished
    batch is cached, so an interrupted run resumes where it stopped and a rerun costs nothing.
    Records that could not be translated go to OUTPUT's .failed.jsonl side file.

    With --repair, INPUT is a translation whose code was translated too ('cho x trong ...'):
    `vichat translate --repair BROKEN.jsonl OUTPUT --source-records EN.json -t google`.
    """
    from .job import plan_file, translate_file
    from ..retry import Backoff

    options = parse_key_values(option_values)
    from ..plugins import get_registry

    translator = get_registry().translator(translator)
    if repair or source_records:
        _repair(input, output, translator, source, target, source_records, match, concurrency, options, dry_run,
                limit, cache_path, batch_size, batch_chars, code_lines, progress,
                Backoff(base=backoff_base, cap=backoff_max, max_retries=retries), repair)
        return
    field_list = [f.strip() for f in fields.split(",") if f.strip()]
    common = dict(fields=field_list, options=options, limit=limit, cache=cache_path,
                  batch_size=batch_size, batch_chars=batch_chars, code_lines=code_lines)
    if dry_run:
        plan = plan_file(input, translator, source, target, **common)
        click.echo("\n".join(format_plan(plan)))
        return

    _run_job(lambda: translate_file(
        input, output, translator, source, target, concurrency=concurrency,
        backoff=Backoff(base=backoff_base, cap=backoff_max, max_retries=retries), progress=progress, **common))


def _run_job(job: Callable[[], Any]) -> None:
    """Run a translate or repair job as a command: ``kill`` stops it like Ctrl-C (exit 130, finished
    work cached), its summary is printed, and records that failed make the exit status 1."""
    from .errors import TranslationInterrupted

    previous = signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    try:
        summary = job()
    except TranslationInterrupted as exc:
        click.echo("\n".join(exc.summary.lines()), err=True)
        sys.exit(130)
    except KeyboardInterrupt:  # outside the request loop (reading input, publishing output)
        click.echo("interrupted; finished work is cached: rerun the same command to resume", err=True)
        sys.exit(130)
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo("\n".join(summary.lines()))
    if summary.failed_records:
        sys.exit(1)


def _repair(input, output, translator, source, target, source_records, match, concurrency, options, dry_run,  # noqa: ANN001
            limit, cache_path, batch_size, batch_chars, code_lines, progress, backoff, repair) -> None:
    """``vichat translate --repair``: see :mod:`vichat.translate.repair`."""
    if not repair:
        raise click.UsageError("--source-records is only used with --repair")
    if not source_records:
        raise click.UsageError("--repair needs --source-records EN_FILE (the English originals, e.g. alpaca_data.json)")
    if limit is not None:
        raise click.UsageError("--limit does not apply to --repair (every record of INPUT is written to OUTPUT)")
    from .repair import plan_repair, repair_file

    common = dict(match=match, options=options, cache=cache_path, batch_size=batch_size, batch_chars=batch_chars,
                  code_lines=code_lines)
    if dry_run:
        plan, counts = plan_repair(input, source_records, translator, source, target, **common)
        click.echo("\n".join(format_plan(plan)))
        click.echo(f"  repair: {counts['flagged']} records with broken code, {counts['matched']} matched by "
                   f"{counts['mode']}, {counts['unmatched']} unmatched")
        return
    _run_job(lambda: repair_file(input, output, source_records, translator, source, target,
                                 concurrency=concurrency, backoff=backoff, progress=progress, **common))
