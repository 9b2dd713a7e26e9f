"""`vichat eval ...`: generate answers, judge them pairwise, report.

Only click and the standard library load at import time (``vichat --help`` stays fast); each
command calls a function of :mod:`vichat.evaluate.jobs` or :mod:`vichat.evaluate.generate`.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import click

from ..clitools import decoding_options, decoding_overrides, parse_key_values, sigterm_as_interrupt
from ..specs import JUDGE_MAX_TOKENS, JUDGE_TEMPERATURE

SET_NAMES = ("vicuna80-vi", "vicuna80-en", "icliniq100-vi")


def _questions(set_name: str | None, questions: str | None) -> tuple[Path, str]:
    """The questions file and its default template: a named set's, or for a ``--questions`` file
    the template of the set it is the file of (``doctor`` for the iCliniq file), else ``chat``."""
    from .files import SETS, set_path, template_for

    if questions and set_name:
        raise click.UsageError(f"pass --set {set_name} or --questions {questions}, not both")
    if questions:
        return Path(questions), template_for(questions)
    if not set_name:
        raise click.UsageError("pass --set NAME or --questions PATH")
    return set_path(set_name), SETS[set_name][1]


@click.group("eval")
def eval_group() -> None:
    """Evaluate models: generate answers, judge them pairwise, report (the paper's section V)."""


@eval_group.command("generate")
@click.option("--model", "model_ref", required=True, help="Adapter dir, model dir, base-model name or training preset.")
@click.option("--set", "set_name", type=click.Choice(SET_NAMES), help="A question set from $VICHAT_SHARED_DATA/eval.")
@click.option("--questions", type=click.Path(exists=True, dir_okay=False), help="A questions .jsonl instead of --set.")
@click.option("--out", type=click.Path(dir_okay=False), help="Answers file [default: answers/answer_<model>_<set>.jsonl].")
@click.option("--template", help="Prompt template [default: chat for vicuna80, doctor for icliniq100].")
@decoding_options()
@click.option("--seed", default=0, show_default=True, help="Sampling seed.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1), help="Questions per generate() call.")
@click.option("--limit", type=click.IntRange(1), help="Only the first N unanswered questions.")
@click.option("--base-path", type=click.Path(exists=True, file_okay=False), help="Local weights of the base model.")
@click.option("--load-in", default="none", show_default=True, type=click.Choice(["none", "8bit", "4bit"]))
@click.option("--model-id", help="model_id to record [default: the adapter/model dir name].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
def generate_cmd(model_ref, set_name, questions, out, template, seed, batch_size, limit, base_path,  # noqa: ANN001
                 load_in, model_id, device, **decoding) -> None:
    """Answer a question set with a model, in FastChat's answer format (resumable)."""
    from ..plugins import get_registry
    from ..train.presets import preset_outputs
    from .generate import generate_job

    qpath, set_template = _questions(set_name, questions)
    if out is None:
        out = Path("answers") / f"answer_{model_id or Path(model_ref).name}_{set_name or qpath.stem}.jsonl"
    signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    decoding = decoding_overrides(decoding)
    try:
        registry = get_registry()
        written, existing = generate_job(
            model_ref, qpath, out, template=registry.template(template or set_template), question_set=set_name,
            base_models=registry.all("base_models"), aliases=preset_outputs(), decoding=decoding, seed=seed,
            batch_size=batch_size, limit=limit, base_path=base_path, load_in=load_in, model_id=model_id, device=device,
        )
    except KeyboardInterrupt:
        click.echo(f"interrupted: the answers so far are in {out}; rerun the same command to continue", err=True)
        sys.exit(130)
    click.echo(f"{written} answers written to {out}" + (f" ({existing} were already there)" if existing else ""))


class _Limit(click.ParamType):
    """``auto`` or a number of requests/tokens per minute (0: no limit)."""

    name = "auto|N"

    def convert(self, value, param, ctx):  # noqa: ANN001, ANN201
        if isinstance(value, (int, float)) or value == "auto":
            return value
        try:
            number = float(value)
        except ValueError:
            self.fail(f"{value!r} is neither 'auto' nor a number", param, ctx)
        if number < 0:
            self.fail(f"{value!r} is negative (0 means no limit)", param, ctx)
        return number


LIMIT = _Limit()


@eval_group.command("judge")
@click.option("--set", "set_name", type=click.Choice(SET_NAMES), help="A question set from $VICHAT_SHARED_DATA/eval.")
@click.option("--questions", type=click.Path(exists=True, dir_okay=False), help="Questions .jsonl (or --set).")
@click.option("--answers", required=True, type=click.Path(exists=True, dir_okay=False), help="The model's answers.")
@click.option("--baseline", required=True, type=click.Path(exists=True, dir_okay=False), help="The baseline's answers (the paper: ChatGPT).")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Reviews file to write.")
@click.option("--judge", "judge_name", default="openai", show_default=True, help="Judge plugin: openai, local, ...")
@click.option("--judge-model", default="", help="Judge model [default: the plugin's; openai: gpt-4].")
@click.option("--base-url", help="OpenAI-compatible endpoint (vLLM, llama.cpp, Ollama, TGI) [default: $OPENAI_BASE_URL].")
@click.option("--protocol", default="swap", show_default=True, type=click.Choice(["swap", "paper"]),
              help="swap: both orders, averaged; paper: baseline as Assistant 1 only.")
@click.option("--prompt-set", default="vicuna", show_default=True, help="Judge prompt set (see `vichat eval prompts`).")
@click.option("--prompts", "prompt_paths", multiple=True, type=click.Path(exists=True), help="Extra judge prompt .jsonl file or dir.")
@click.option("--aspects", is_flag=True, help="Also ask for helpfulness/relevance/accuracy/detail scores as JSON (one more request each).")
@click.option("--temperature", default=JUDGE_TEMPERATURE, show_default=True, type=click.FloatRange(0),
              help="Judge sampling temperature.")
@click.option("--max-tokens", default=JUDGE_MAX_TOKENS, show_default=True, type=click.IntRange(1), help="Longest review.")
@click.option("--concurrency", "-j", default=16, show_default=True, type=click.IntRange(1, 512), help="Requests in flight.")
@click.option("--rpm", default="auto", show_default=True, type=LIMIT,
              help="Requests per minute; auto: start at 500 (gpt-4, lowest paid tier), then what the server's "
                   "x-ratelimit headers announce; 0: no limit.")
@click.option("--tpm", default="auto", show_default=True, type=LIMIT,
              help="Tokens per minute; auto: start at 10000, then what the server announces; 0: no limit.")
@click.option("--max-cost", type=click.FloatRange(0), help="Hard cap in USD: stop before a request could exceed it.")
@click.option("--price-in", type=click.FloatRange(0), help="USD per million prompt tokens [default: known models' list price].")
@click.option("--price-out", type=click.FloatRange(0), help="USD per million completion tokens.")
@click.option("--dry-run", is_flag=True, help="Print judgments, tokens and estimated cost; send nothing.")
@click.option("--cache", "cache_path", type=click.Path(dir_okay=False), help="Judgment cache [default: $VICHAT_CACHE_DIR/judge.sqlite].")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the cache.")
@click.option("--retry-failed", is_flag=True, help="Ask again where a cached review had no readable scores.")
@click.option("--skip-missing", is_flag=True, help="Judge the questions that have both answers; report the rest.")
@click.option("--limit", type=click.IntRange(1), help="Only the first N questions.")
@click.option("--timeout", default=120.0, show_default=True, type=click.FloatRange(0.1), help="Seconds per request.")
@click.option("--max-retries", default=6, show_default=True, type=click.IntRange(0), help="Retries on 429/5xx/timeouts.")
@click.option("--option", "-o", "option_values", multiple=True, metavar="KEY=VALUE", help="Judge plugin option (e.g. base_path=DIR for the local judge); one the judge does not take is refused, listing its options.")
def judge_cmd(set_name, questions, answers, baseline, out, judge_name, judge_model, base_url, protocol, prompt_set,  # noqa: ANN001
              prompt_paths, aspects, temperature, max_tokens, concurrency, rpm, tpm, max_cost, price_in, price_out,
              dry_run, cache_path, no_cache, retry_failed, skip_missing, limit, timeout, max_retries, option_values) -> None:
    """Judge a model's answers against a baseline's, pairwise; writes FastChat-format reviews."""
    from ..retry import Backoff
    from .judge import JudgeSettings
    from ..plugins import get_registry
    from .jobs import JudgeJob, estimate_job, judge_job
    from .limiter import START_RPM, START_TPM
    from .runner import RunOptions
    from .summary import format_estimate, format_outcome

    qpath, _ = _questions(set_name, questions)
    options: dict = parse_key_values(option_values)
    registry = get_registry()
    spec = registry.judge(judge_name)
    # --timeout and --base-url fill the judge's options of those names, where it declares them.
    if "timeout" in spec.options:
        options.setdefault("timeout", timeout)
    if base_url:
        if "base_url" not in spec.options:
            raise click.UsageError(f"--base-url: judge {judge_name!r} sends no HTTP requests (it takes no base_url)")
        options["base_url"] = base_url
    if (price_in is None) != (price_out is None):
        raise click.UsageError("pass both --price-in and --price-out, or neither")
    job = JudgeJob(
        judge=spec, prompt_sets=registry.all("judge_prompts"), registry=registry,
        questions=qpath, answers=answers, baseline=baseline, out=out, protocol=protocol, prompt_set=prompt_set,
        prompt_paths=prompt_paths, cache=cache_path, use_cache=not no_cache, skip_missing=skip_missing, limit=limit,
        settings=JudgeSettings(judge=judge_name, model=judge_model, temperature=temperature, max_tokens=max_tokens,
                               aspects=aspects, options=options),
        run=RunOptions(concurrency=concurrency, rpm=START_RPM if rpm == "auto" else (rpm or None),
                       tpm=START_TPM if tpm == "auto" else (tpm or None), adaptive_limits="auto" in (rpm, tpm),
                       max_cost=max_cost,
                       price=(price_in, price_out) if price_in is not None else None,
                       backoff=Backoff(base=1.0, cap=60.0, max_retries=max_retries), retry_failed=retry_failed),
    )
    if dry_run:
        for line in format_estimate(estimate_job(job)):
            click.echo(line)
        return
    signal.signal(signal.SIGTERM, sigterm_as_interrupt)
    try:
        outcome = judge_job(job)
    except KeyboardInterrupt:
        click.echo("interrupted: finished judgments are cached; rerun the same command to continue", err=True)
        sys.exit(130)
    for line in format_outcome(outcome, out):
        click.echo(line)
    if outcome.summary.stopped:
        click.echo(f"error: {outcome.summary.stopped}", err=True)
        sys.exit(3)
    if outcome.failed:
        click.echo(f"error: {outcome.failed} of {outcome.written} reviews have no scores ({outcome.unreadable} "
                   f"unreadable, {outcome.not_judged} not judged); they are in {out} with \"score\": null. "
                   "Rerun to ask again (--retry-failed for the unreadable ones)", err=True)
        sys.exit(4)


@eval_group.command("report")
@click.argument("reviews", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", default="report", show_default=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--label", "labels", multiple=True, help="Column name per review file, in order [default: file names].")
@click.option("--questions", type=click.Path(exists=True, dir_okay=False), help="Questions (categories for reviews that lack them).")
@click.option("--answers", multiple=True, type=click.Path(exists=True, dir_okay=False), help="Answer files (lengths for the length-bias check).")
@click.option("--baseline-position", type=click.Choice(["1", "2"]), help="Where the baseline is in files that do not say [default: 1, the paper's].")
@click.option("--reparse", default="failed", show_default=True, type=click.Choice(["failed", "all", "none"]),
              help="Parse review texts again: where the score is missing/-1, always, or never.")
@click.option("--bootstrap", "n_boot", default=2000, show_default=True, type=click.IntRange(100), help="Bootstrap resamples.")
@click.option("--seed", default=0, show_default=True, help="Bootstrap seed.")
@click.option("--no-png", is_flag=True, help="Skip the bar chart.")
def report_cmd(reviews, out, labels, questions, answers, baseline_position, reparse, n_boot, seed, no_png) -> None:  # noqa: ANN001
    """Per-category relative scores (Table III layout), report.json and a bar chart."""
    from .jobs import ReportJob, report_job
    from .render import table_iii

    reports, paths = report_job(ReportJob(
        reviews=reviews, out=out, labels=labels, questions=questions, answers=answers,
        baseline_position=int(baseline_position) if baseline_position else None, reparse=reparse,
        n_boot=n_boot, seed=seed, png=not no_png,
    ))
    for line in table_iii(reports):
        click.echo(line)
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


@eval_group.command("prompts")
@click.option("--prompts", "prompt_paths", multiple=True, type=click.Path(exists=True), help="Extra prompt file or dir.")
def prompts_cmd(prompt_paths) -> None:  # noqa: ANN001
    """List the judge prompts (package, $VICHAT_JUDGE_PROMPTS, --prompts)."""
    from .prompts import load_prompts

    from ..plugins import get_registry

    book = load_prompts(prompt_paths, get_registry().all("judge_prompts"))
    for p in sorted(book.prompts.values(), key=lambda p: (p.set, p.prompt_id, p.version)):
        click.echo(f"{p.set:10s} {p.key:24s} for {','.join(p.applies_to):12s} {p.description}  [{p.origin}]")
