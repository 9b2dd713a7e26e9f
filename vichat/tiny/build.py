"""The tiny offline default: a BLOOM-architecture base trained from scratch on Vietnamese text, plus
its ``tiny-chat`` and ``tiny-doctor`` LoRA adapters, built in a few minutes on two CPU cores.

Stages, each written to a temporary folder and renamed into place when complete (so a folder that
exists is always whole, and an interrupted build resumes from the stages it finished):

``tokenizer/``            byte-level BPE (style ``bloom``) trained on the training split
``base/``                 the model (config.json, model.safetensors), tokenizer files, pretrain.json
``adapters/tiny-chat/``   LoRA adapter from :func:`vichat.train.trainer.run` (PEFT format)
``adapters/tiny-doctor/``
``eval.json``             the adapters against the base on held-out pairs (:mod:`vichat.tiny.heldout`)
``report.json``           written last: sizes, held-out perplexity against a unigram baseline, the
                          held-out evaluation, timings

The base is a plain Vietnamese language model, pretrained on text that shares nothing with the
records the adapters train, validate or are evaluated on (:mod:`vichat.tiny.parts`).

They live in ``$VICHAT_CACHE_DIR/tiny/<key>/``, where the key hashes everything that changes the
result: the corpus files' contents, the bundled adapter and held-out files' contents,
:class:`TinyConfig`, the seed and :data:`TINY_VERSION`. Each
stage folder holds a ``stage.json`` (time taken, results); the base stage also checkpoints every
``checkpoint_every`` steps and on Ctrl-C (``.work/``), so even it resumes mid-way, to the same weights.

This module decides what to build and owns the cache; :mod:`vichat.tiny.stages` builds each
stage and :mod:`vichat.tiny.pretrain` holds the from-scratch loop. Only the standard library is
imported here at module level: checking the cache costs no torch import.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from ..records import VichatError
from .config import (  # noqa: F401 - part of this module's interface
    ADAPTERS,
    LIMIT_SECONDS,
    TINY_VERSION,
    Progress,
    TinyConfig,
    TinyPaths,
    _Reporter,
    _write_json,
)

DEFAULT_CONFIG = TinyConfig()


@dataclass(frozen=True)
class TinyBuild:
    """A finished build: its paths, its report, and whether it came straight from the cache."""

    paths: TinyPaths
    report: Mapping[str, Any]
    cached: bool = False

    @property
    def base(self) -> Path:
        return self.paths.base

    @property
    def adapters(self) -> dict[str, Path]:
        return {a: self.paths.adapter(a) for a in self.report.get("adapters", {})}


# --------------------------------------------------------------------------- key and paths


def cache_root() -> Path:
    """``$VICHAT_CACHE_DIR/tiny`` (default ``~/.cache/vichat/tiny``)."""
    from ..data.tokenizers import cache_dir

    return cache_dir() / "tiny"


def build_key(corpus: Any = None, seed: int = 0, config: TinyConfig | None = None) -> str:
    """The cache key: a hash of the corpus contents, the config, the seed and the code version."""
    from .. import __version__
    from .pretrain import fingerprint, normalize_sources, sample_fingerprint
    from .parts import ADAPTER_DATA

    payload = {
        "tiny_version": TINY_VERSION,
        "vichat": __version__,
        "corpus": fingerprint(normalize_sources(corpus)),
        # What the adapters train on and are evaluated on (and what pretraining is cleaned of).
        "adapter_data": sample_fingerprint([f for v in ADAPTER_DATA.values() for f in v[:2]]),
        "config": (config or DEFAULT_CONFIG).key_dict(),
        "seed": int(seed),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def tiny_paths(corpus: Any = None, seed: int = 0, config: TinyConfig | None = None,
               out: str | os.PathLike | None = None) -> TinyPaths:
    """Where the build for these settings lives (``out`` instead of the cache when given)."""
    if out is not None:
        return TinyPaths(Path(out).expanduser().resolve())
    return TinyPaths(cache_root() / build_key(corpus, seed, config))


def read_report(paths: TinyPaths) -> dict[str, Any] | None:
    """The build's report.json, or None while the build is incomplete."""
    try:
        return json.loads(paths.report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def list_builds() -> list[TinyPaths]:
    """Every build folder under the cache, newest first."""
    root = cache_root()
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return [TinyPaths(p) for p in sorted(dirs, key=lambda p: p.stat().st_mtime, reverse=True)]


# --------------------------------------------------------------------------- atomic writes and locking


@contextlib.contextmanager
def _lock(root: Path, echo: Callable[[str], None]) -> Iterator[None]:
    """One builder per build folder (the demo and a CLI may start the same build at once)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, the atomic renames still hold
        yield
        return
    with open(root / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            echo(f"another process is building {root}; waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _clean_stale(root: Path) -> None:
    # Temporary folders of a killed build (we hold the lock, so no live builder owns them).
    for p in list(root.glob(".tmp-*")) + list((root / "adapters").glob(".tmp-*")):
        shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------- the time plan

#: Rough costs on 2 cores of the reference machine, for the plan printed before a build; the bars
#: show the measured rate and ETA. Base: seconds per (token x parameter) of a training step.
_SEC_PER_TOKEN_PARAM = 5.5e-11
_TOKENIZER_SEC_PER_MCHAR = 3.0
_ADAPTER_SECONDS = {"tiny-chat": 90.0, "tiny-doctor": 70.0}
_HELDOUT_EVAL_SECONDS = 30.0


def approx_params(cfg: TinyConfig) -> int:
    """Parameters of the base for ``cfg`` (tied embeddings + 12 h² per layer), without building it."""
    h = cfg.hidden_size
    return cfg.vocab_size * h + cfg.n_layer * 12 * h * h


def estimate_seconds(cfg: TinyConfig, chars: int, adapters: Sequence[str]) -> dict[str, float]:
    """Per-stage time estimates (seconds) for the plan and for the overall progress fraction."""
    tokens = cfg.batch_size * cfg.seq_len
    base = (cfg.minutes * 60 if cfg.minutes is not None
            else cfg.steps * tokens * approx_params(cfg) * _SEC_PER_TOKEN_PARAM)
    est = {"tokenizer": 2 + _TOKENIZER_SEC_PER_MCHAR * chars / 1e6, "base": base, "eval": 3.0}
    for a in adapters:
        est[f"adapter:{a}"] = _ADAPTER_SECONDS.get(a, 60.0)
    if adapters:
        est["heldout-eval"] = _HELDOUT_EVAL_SECONDS
    return est


def _fmt(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


# --------------------------------------------------------------------------- the build


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_tiny(
    corpus: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    seed: int = 0,
    *,
    config: TinyConfig | None = None,
    steps: int | None = None,
    minutes: float | None = None,
    force: bool = False,
    out: str | os.PathLike | None = None,
    adapters: bool | Sequence[str] = True,
    threads: int | None = None,
    progress: Progress | None = None,
    echo: Callable[[str], None] | None = _stderr,
    show_progress: bool = True,
    registry: Any = None,
) -> TinyBuild:
    """Build (or find in the cache) the tiny base model and its adapters; see the module docstring.

    :param corpus: text or JSONL files/folders (``"sample"`` = the bundled sample, the default).
    :param steps: base training steps (default ``config.steps``); ``minutes`` trains for that long instead.
    :param force: rebuild every stage even if cached.
    :param out: build into this folder instead of ``$VICHAT_CACHE_DIR/tiny/<key>``.
    :param adapters: ``False`` for the base only, or the adapter names (default both presets).
    :param threads: torch threads (default: up to 2; results are reproducible for a given count).
    :param progress: ``progress(stage, fraction_of_whole_build, message)``, for the demo's start-up.
    :param echo: where the plan and stage messages go (``None``: silent).
    :param registry: the caller's plugin registry, where the adapters' trainer finds the ``tiny``
        base model and the templates; needed only when an adapter is built or evaluated (a cached
        build, or ``adapters=False``, needs none).
    """
    say = echo or (lambda _m: None)
    cfg = config or DEFAULT_CONFIG
    if steps is not None and minutes is not None:
        raise VichatError("give --steps or --minutes, not both")
    if steps is not None:
        cfg = replace(cfg, steps=steps, minutes=None)
    if minutes is not None:
        cfg = replace(cfg, minutes=minutes)
    wanted = tuple(ADAPTERS if adapters is True else (adapters or ()))
    for name in wanted:
        if name not in ADAPTERS:
            raise VichatError(f"unknown tiny adapter {name!r}; choose from {', '.join(ADAPTERS)}")
    from .pretrain import normalize_sources

    sources = normalize_sources(corpus)
    paths = tiny_paths(sources, seed, cfg, out)

    if not force and paths.is_complete(wanted):  # the fast path: no lock, no torch
        report = read_report(paths) or {}
        if set(wanted) <= set(report.get("adapters", {})):
            if progress is not None:
                progress("done", 1.0, f"tiny model ready (cached) at {paths.root}")
            return TinyBuild(paths, report, cached=True)

    with _lock(paths.root, say):
        _clean_stale(paths.root)
        if force:  # stage folders are replaced only once their new version is complete
            paths.report.unlink(missing_ok=True)
            shutil.rmtree(paths.work, ignore_errors=True)
        return _build(paths, sources, seed, cfg, wanted, force, threads, progress, say, show_progress, registry)


def _build(paths: TinyPaths, sources: list[str], seed: int, cfg: TinyConfig, wanted: tuple[str, ...],
           force: bool, threads: int | None, progress: Progress | None, say: Callable[[str], None],
           show: bool, registry: Any) -> TinyBuild:
    import torch

    from .pretrain import load_corpus
    from .parts import protected_texts
    from .stages import build_adapter, build_base, build_tokenizer, evaluate_heldout, make_report, stage_info

    t_start = time.perf_counter()
    corpus = load_corpus(sources, cfg, protected_texts())
    if corpus.n_skipped:
        say(f"warning: skipped {corpus.n_skipped} corpus rows without text; first: {'; '.join(corpus.skipped)}")
    if corpus.n_removed:
        say(f"dropped {corpus.n_removed} corpus documents that contain adapter or held-out text; first: "
            f"{'; '.join(corpus.removed)}")

    def todo(stage_dir: Path, marker: str) -> bool:
        return force or not (stage_dir / marker).exists()

    stages = {"tokenizer": todo(paths.tokenizer, "tokenizer.json"), "base": todo(paths.base, "config.json")}
    stages["eval"] = stages["base"]
    for a in wanted:
        stages[f"adapter:{a}"] = todo(paths.adapter(a), "adapter_config.json")
    if wanted:
        stages["heldout-eval"] = any(stages.values()) or not paths.eval.exists()
    if registry is None and any(stages[k] for k in stages if k.startswith(("adapter:", "heldout-eval"))):
        raise VichatError("building the tiny adapters needs the plugin registry (where the trainer finds the "
                          "`tiny` base model and the templates): pass registry=vichat.plugins.get_registry()")
    est = estimate_seconds(cfg, sum(map(len, corpus.train)), wanted)
    est = {k: (v if stages[k] else 0.0) for k, v in est.items()}
    n_threads = threads or min(2, os.cpu_count() or 1)
    _print_plan(say, paths, cfg, corpus, stages, est, n_threads, seed)
    report_progress = _Reporter(est, progress)
    report_progress("plan", 0.0, f"building the tiny model in {paths.root}")

    def done(stage: str, built: bool, folder: Path) -> None:
        seconds = stage_info(folder).get("seconds", 0.0)
        say(f"{stage}: " + (f"done ({_fmt(seconds)})" if built else "cached"))

    old_threads = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        if stages["tokenizer"]:
            build_tokenizer(paths, corpus, cfg, seed)
        report_progress.finish("tokenizer", f"tokenizer ready ({paths.tokenizer})")
        done("tokenizer", stages["tokenizer"], paths.tokenizer)
        if stages["base"]:
            build_base(paths, corpus, cfg, seed, report_progress, say, show)
        report_progress.finish("eval", "base model ready")
        done("base", stages["base"], paths.base)
        ev = json.loads((paths.base / "pretrain.json").read_text(encoding="utf-8"))["heldout"]
        say(f"base: held-out perplexity {ev['model_perplexity']:.1f} vs unigram {ev['unigram_perplexity']:.1f} "
            f"(ratio {ev['ratio']:.3f})")
        for name in wanted:
            stage = f"adapter:{name}"
            if stages[stage]:
                build_adapter(paths, name, seed, cfg, registry, report_progress, say, show)
            report_progress.finish(stage, f"adapter {name} ready")
            done(stage, stages[stage], paths.adapter(name))
        if wanted:
            if stages["heldout-eval"]:
                report_progress("heldout-eval", 0.0, "evaluating the adapters on held-out pairs")
                evaluate_heldout(paths, registry, say)
            report_progress.finish("heldout-eval", "held-out evaluation done")
    finally:
        torch.set_num_threads(old_threads)

    previous = read_report(paths) or {}
    built = sorted(set(wanted) | {a for a in previous.get("adapters", {}) if paths.adapter(a).exists()})
    report = make_report(paths, sources, seed, cfg, corpus, built, time.perf_counter() - t_start, n_threads)
    _write_json(paths.report, report)
    shutil.rmtree(paths.work, ignore_errors=True)
    say(f"tiny build complete in {_fmt(report['timings']['this_run'])}: {paths.root}")
    if progress is not None:
        progress("done", 1.0, f"tiny model ready at {paths.root}")
    return TinyBuild(paths, report, cached=False)


def _print_plan(say: Callable[[str], None], paths: TinyPaths, cfg: TinyConfig, corpus: Any,
                stages: dict[str, bool], est: dict[str, float], threads: int, seed: int) -> None:
    chars = sum(map(len, corpus.train))
    what = {
        "tokenizer": f"byte-level BPE, vocab {cfg.vocab_size}, on {chars / 1e6:.2f} M chars",
        "base": (f"BLOOM {cfg.n_layer} x {cfg.hidden_size} ({cfg.n_head} heads, ~{approx_params(cfg) / 1e6:.1f} M "
                 f"params), " + (f"{cfg.minutes:g} min" if cfg.minutes is not None else f"{cfg.steps} steps")
                 + f" x {cfg.batch_size} x {cfg.seq_len} tokens"),
        "eval": f"held-out perplexity vs unigram on {sum(map(len, corpus.heldout)) / 1e3:.0f} k chars",
        "heldout-eval": "base vs adapters on the held-out pairs: response loss, greedy answers",
    }
    say(f"tiny build plan (seed {seed}, {threads} threads) -> {paths.root}")
    for stage, needed in stages.items():
        label = what.get(stage, f"LoRA via vichat.train.trainer, preset {stage.split(':', 1)[-1]}")
        when = f"~{_fmt(est[stage])}" if needed else "cached"
        say(f"  {stage:<20} {when:>10}  {label}")
    total = sum(est.values())
    say(f"  {'total':<20} {'~' + _fmt(total):>10}  (budget {LIMIT_SECONDS // 60} min for the default settings)")


__all__ = ["ADAPTERS", "DEFAULT_CONFIG", "TinyBuild", "TinyConfig", "TinyPaths", "build_key", "build_tiny",
           "cache_root", "list_builds", "read_report", "tiny_paths"]
