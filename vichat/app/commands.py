"""``vichat serve`` (the app) and ``vichat arena`` (votes: export, leaderboard).

Only click and the standard library are imported at import time, so ``vichat --help`` stays fast;
gradio and the models load inside the commands.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.command("serve")
@click.option("--host", default=None, help="Interface to listen on [default: $GRADIO_SERVER_NAME or 127.0.0.1; "
              "0.0.0.0 to accept other machines].")
@click.option("--port", type=int, default=None, help="Port [default: $GRADIO_SERVER_PORT or 7860].")
@click.option("--config", "--models", "models_config", type=click.Path(dir_okay=False),
              help="Models configuration (YAML) [default: $VICHAT_MODELS_CONFIG, else this machine's default].")
@click.option("--fake", is_flag=True, help="Serve canned answers instead of models (UI work, demos of the arena).")
@click.option("--votes-db", type=click.Path(dir_okay=False), help="Votes database [default: $VICHAT_VOTES_DB or "
              "./vichat-data/votes.sqlite].")
@click.option("--reports", multiple=True, type=click.Path(file_okay=False),
              help="Folder with evaluation reports for the Scoring tab (repeatable) [default: $VICHAT_REPORTS].")
@click.option("--concurrency", type=click.IntRange(1), help="Generations at once [default: "
              "$VICHAT_GENERATION_CONCURRENCY or 8; the local engine batches them].")
@click.option("--print-vllm-command", is_flag=True, help="Print the `vllm serve` command of each `type: vllm` "
              "backend in the models configuration, and exit.")
def serve(host, port, models_config, fake, votes_db, reports, concurrency, print_vllm_command) -> None:  # noqa: ANN001
    """Run the Gradio app: chat, arena, leaderboard and scoring (what the Space runs)."""
    if print_vllm_command:
        from ..plugins import get_registry
        from ..serve.vllm import print_commands_for

        for line in print_commands_for(models_config, registry=get_registry()):
            click.echo(line)
        return
    from .app import app_from_env, launch
    from .settings import AppSettings

    settings = AppSettings.from_env()
    changes: dict = {}
    if votes_db:
        changes["votes_db"] = Path(votes_db)
    if reports:
        changes["report_dirs"] = tuple(Path(r) for r in reports)
    if concurrency:
        changes["generation_concurrency"] = concurrency
    demo = app_from_env(models_config, fake=fake, settings=settings.with_(**changes))
    launch(demo, host, port)


def export_votes(db: str | Path, out: str | Path | None = None) -> int:
    """Write every vote in ``db`` as JSONL to ``out`` (stdout when ``None``); return the count."""
    from ..arena.votes import VoteStore

    if not Path(db).is_file():
        raise click.ClickException(f"{db}: no votes database (set --db or $VICHAT_VOTES_DB)")
    store = VoteStore(db)
    return store.export_jsonl(out if out is not None else sys.stdout)


@click.group("arena")
def arena() -> None:
    """Arena votes: export them, print the leaderboard."""


def _default_db() -> str:
    from .settings import AppSettings

    return str(AppSettings.from_env().votes_db)


@arena.command("export")
@click.option("--db", default=None, type=click.Path(dir_okay=False), help="Votes database [default: "
              "$VICHAT_VOTES_DB or ./vichat-data/votes.sqlite].")
@click.option("--out", "-o", type=click.Path(dir_okay=False), help="JSONL file to write [default: stdout].")
def export_cmd(db, out) -> None:  # noqa: ANN001
    """Every vote as one JSON object per line (the schema is in docs/app.md)."""
    n = export_votes(db or _default_db(), out)
    if out:
        click.echo(f"wrote {n} votes to {out}", err=True)


@arena.command("leaderboard")
@click.option("--db", default=None, type=click.Path(dir_okay=False), help="Votes database.")
@click.option("--include-named", is_flag=True, help="Also count votes from the named side-by-side mode.")
@click.option("--bootstrap", "rounds", default=1000, show_default=True, type=click.IntRange(0),
              help="Bootstrap resamples for the 95% intervals.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--audit", is_flag=True, help="Instead of the ratings: votes per address and per session, what "
              "de-duplication leaves out, and the addresses that look anomalous.")
@click.option("--address-cap", type=click.IntRange(0), default=None,
              help="Votes counted per address and UTC day [default: $VICHAT_LEADERBOARD_ADDRESS_CAP or 50; 0: no cap].")
def leaderboard_cmd(db, include_named, rounds, as_json, audit, address_cap) -> None:  # noqa: ANN001
    """Bradley-Terry ratings (Elo scale, 95% bootstrap intervals), online Elo and counts, over the
    de-duplicated votes (the rule is in docs/app.md), as the app's leaderboard shows them."""
    from ..arena.ratings import leaderboard
    from .settings import AppSettings
    from ..arena.votes import VoteStore, deduplicated

    db = db or _default_db()
    if not Path(db).is_file():
        raise click.ClickException(f"{db}: no votes database (set --db or $VICHAT_VOTES_DB)")
    s = AppSettings.from_env()
    cap = s.leaderboard_address_cap if address_cap is None else address_cap
    modes = ("anonymous", "named") if include_named else ("anonymous",)
    ballots = VoteStore(db).ballots(modes)
    if audit:
        from ..arena.audit import audit as run_audit, format_audit

        report = run_audit(ballots, cap)
        click.echo(json.dumps(report, ensure_ascii=False, indent=2) if as_json else format_audit(report))
        return
    rows = leaderboard(deduplicated(ballots, cap), rounds=rounds, prior=s.bt_prior, k=s.elo_k)
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in rows], ensure_ascii=False, indent=2))
        return
    click.echo(f"{'rank':>4}  {'model':24s} {'rating':>7} {'95% CI':>15} {'elo':>7} {'n':>5}  W/L/T/BB")
    for r in rows:
        click.echo(f"{r.rank:>4}  {r.model:24s} {r.rating:7.1f} {r.lower:7.0f}–{r.upper:<7.0f} {r.elo:7.1f} "
                   f"{r.battles:>5}  {r.wins}/{r.losses}/{r.ties}/{r.both_bad}")
