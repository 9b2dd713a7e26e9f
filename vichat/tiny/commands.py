"""`vichat tiny build`, `vichat tiny eval` and `vichat tiny info`: the tiny offline default model.

Thin: each command calls :mod:`vichat.tiny.build`, which imports torch only when it has work to do,
so a cached build and `info` answer at once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Callable

import click

from .build import DEFAULT_CONFIG  # standard library only at import: `vichat --help` stays fast


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.1f} MB"


def describe_build(root: Path, report: dict[str, Any] | None) -> list[str]:
    """Lines for people about one build folder: status, sizes, perplexities, timings."""
    if report is None:
        stages = [p.name for p in (root / "tokenizer", root / "base") if p.exists()]
        stages += [f"adapters/{p.name}" for p in sorted((root / "adapters").glob("[!.]*"))]
        done = ", ".join(stages) if stages else "nothing yet"
        return [f"{root}  [incomplete: {done} finished; `vichat tiny build` with the same settings resumes]"]
    ppl, base, cfg = report["perplexity"], report["base"], report["config"]
    lines = [
        f"{root}  [complete, built {report.get('created', '?')}]",
        f"  corpus     {', '.join(report['corpus']['inputs'])}: {report['corpus']['train_chars']:,} training chars, "
        f"{report['corpus']['heldout_chars']:,} held out",
        f"  tokenizer  byte-level BPE, {report['tokenizer']['vocab_size']:,} tokens",
        f"  base       BLOOM {cfg['n_layer']} layers x {cfg['hidden_size']} ({cfg['n_head']} heads), "
        f"{base['parameters']:,} parameters, {_mb(base.get('bytes'))}; {base['training']['steps']} steps, "
        f"{base['training']['tokens']:,} tokens, seed {report['seed']}",
        f"  perplexity held-out {ppl['model_perplexity']:.1f} vs unigram {ppl['unigram_perplexity']:.1f} "
        f"(ratio {ppl['ratio']:.3f}; {ppl['model_bits_per_char']:.2f} vs {ppl['unigram_bits_per_char']:.2f} bits/char, "
        f"{ppl['heldout_tokens']:,} tokens)",
    ]
    for name, info in report.get("adapters", {}).items():
        res = info.get("result") or {}
        loss = res.get("final_val_loss")
        lines.append(f"  adapter    {name}: {_mb(info.get('bytes'))}" + (f", validation loss {loss:.3f}" if loss else ""))
    ev = report.get("heldout_eval")
    if ev:
        for name, v in ev["loss"].items():
            g = ev["generation"].get(name, {})
            lines.append(f"  held-out   {name}: response loss {v['adapter']:.3f} vs base {v['base']:.3f} "
                         f"({v['reduction']:.1%} lower); answers ending with EOS {g.get('eos_share', 0):.0%}")
        if "chat_vs_doctor" in ev:
            lines.append(f"  held-out   tiny-chat and tiny-doctor differ on {ev['chat_vs_doctor']['differ_share']:.0%} "
                         f"of {ev['chat_vs_doctor']['questions']} questions (base ends with EOS "
                         f"{ev['generation']['tiny']['eos_share']:.0%}); `vichat tiny eval` for the table")
    t = report.get("timings", {})
    parts = [f"{k} {v:.0f} s" for k, v in t.items() if k not in ("this_run", "stages_total") and v is not None]
    lines.append(f"  timings    {', '.join(parts)}; total {t.get('stages_total', 0):.0f} s")
    return lines


@click.group()
def tiny() -> None:
    """The tiny offline default model: build and inspect.

    A BLOOM-architecture model trained from scratch on Vietnamese text, with tiny-chat and
    tiny-doctor LoRA adapters: minutes on two CPU cores, no download, cached.
    """


@tiny.command("build")
@click.option("--corpus", "corpus", multiple=True, metavar="PATH",
              help="Text (.txt) or JSON/JSONL/CSV/Parquet file or folder to pretrain on (repeatable; rows with "
                   "'text', or instruction/output or prompt/response, read as plain text). 'sample' = the bundled "
                   "prose [default].")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same weights).")
@click.option("--steps", type=click.IntRange(min=1), help=f"Base training steps [default: {DEFAULT_CONFIG.steps}].")
@click.option("--minutes", type=click.FloatRange(min=0, min_open=True),
              help="Train the base for this many minutes instead of --steps (depends on the machine's speed).")
@click.option("--force", is_flag=True, help="Rebuild every stage even if cached.")
@click.option("--out", type=click.Path(file_okay=False), help="Build into DIR instead of the cache.")
@click.option("--no-adapters", is_flag=True, help="Build the tokenizer and base model only.")
@click.option("--threads", type=click.IntRange(min=1), help="torch threads [default: up to 2].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON when done.")
def build_cmd(corpus: tuple[str, ...], seed: int, steps: int | None, minutes: float | None, force: bool,
              out: str | None, no_adapters: bool, threads: int | None, as_json: bool) -> None:
    """Train the tokenizer, base model and adapters (or find them in the cache).

    \b
      vichat tiny build                       the default (bundled prose, a few minutes on 2 cores)
      vichat tiny build --corpus ../shared/data/corpus/viwiki_sample.jsonl --minutes 4
      vichat tiny build --no-adapters --steps 300 --out /tmp/tiny
    """
    from ..plugins import get_registry
    from ..records import VichatError
    from .build import build_tiny

    if steps is not None and minutes is not None:
        raise VichatError("give --steps or --minutes, not both")
    try:
        result = build_tiny(list(corpus) or None, seed, steps=steps, minutes=minutes, force=force, out=out,
                            adapters=not no_adapters, threads=threads, registry=get_registry())
    except KeyboardInterrupt:
        click.echo("\ninterrupted: finished stages (and the base checkpoint) are kept; run the same command "
                   "again to resume", err=True)
        sys.exit(130)
    if as_json:
        click.echo(json.dumps(dict(result.report), ensure_ascii=False, indent=2))
        return
    if result.cached:
        click.echo("cached (nothing to do); --force rebuilds")
    for line in describe_build(result.paths.root, dict(result.report)):
        click.echo(line)


@tiny.command("eval")
@click.option("--build", "build_dir", type=click.Path(file_okay=False, exists=True),
              help="A build folder (from --out, or one `vichat tiny info` lists) [default: the default build].")
@click.option("--force", is_flag=True, help="Measure again even if the build already holds eval.json.")
@click.option("--json", "as_json", is_flag=True, help="Print the evaluation as JSON.")
def eval_cmd(build_dir: str | None, force: bool, as_json: bool) -> None:
    """The adapters against the bare base on held-out pairs that nothing trained on.

    \b
    Response-token loss of the base and of each adapter; greedy answers with the app's decoding:
    share ending with EOS, share leaking a template marker, and how often tiny-chat and
    tiny-doctor answer differently. The default build is built first if absent (`vichat tiny
    build`), and its numbers are read from its eval.json unless --force.
    """
    from ..plugins import get_registry
    from ..records import VichatError
    from .build import TinyPaths, build_tiny
    from .heldout import format_eval

    registry = get_registry()
    if build_dir is None:
        paths = build_tiny(registry=registry).paths
    else:
        paths = TinyPaths(Path(build_dir).expanduser().resolve())
        if not (paths.base / "config.json").exists():
            raise VichatError(f"--build {build_dir}: no tiny build there (expected base/config.json); "
                              "`vichat tiny info` lists the builds")
    result = None if force else _read_json(paths.eval)
    if result is None:
        result = eval_build(paths, registry)
    if as_json:
        click.echo(json.dumps(result, ensure_ascii=False, indent=2))
        return
    click.echo(f"{paths.root}")
    for line in format_eval(result):
        click.echo(line)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def eval_build(paths: Any, registry: Any) -> dict[str, Any]:
    """Measure ``paths``' adapters against its base; write eval.json and update report.json.
    ``registry``: the plugin registry (the ``tiny`` base model's spec and the templates)."""
    from ..records import VichatError
    from .build import _write_json, read_report
    from .stages import evaluate_heldout

    if not any((p / "adapter_config.json").exists() for p in paths.adapters.values()):
        raise VichatError(f"{paths.root}: the build has no adapters to evaluate; `vichat tiny build` (without "
                          "--no-adapters) trains them")
    result = evaluate_heldout(paths, registry, lambda m: click.echo(m, err=True))
    report = read_report(paths)
    if report is not None:
        report["heldout_eval"] = result
        _write_json(paths.report, report)
    return result


@tiny.command("info")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info_cmd(as_json: bool) -> None:
    """Where the tiny builds are cached, and what each holds."""
    info_main(as_json, click.echo)


def info_main(as_json: bool = False, echo: Callable[[str], None] = click.echo) -> int:
    """What `vichat tiny info` prints (tests call it)."""
    from .build import cache_root, list_builds, read_report, tiny_paths

    default = tiny_paths()
    builds = list_builds()
    if as_json:
        echo(json.dumps({
            "cache": str(cache_root()),
            "default": {"path": str(default.root), "built": default.report.exists(),
                        "adapters": sorted(a for a, p in default.adapters.items() if p.exists())},
            "builds": [{"path": str(b.root), "built": b.report.exists(), "report": read_report(b)} for b in builds],
        }, ensure_ascii=False, indent=2))
        return 0
    echo(f"cache: {cache_root()}")
    state = ("built" if default.is_complete() else "built without adapters" if default.report.exists()
             else "not built yet (`vichat tiny build`)")
    echo(f"default build: {default.root} [{state}]")
    if not builds:
        echo("no builds yet")
    for b in builds:
        echo("")
        for line in describe_build(b.root, read_report(b)):
            echo(line)
    return 0
