"""The stages of a tiny build: tokenizer, base model (pretrain + held-out perplexity), adapters,
held-out evaluation, report.

Each stage writes into a temporary folder that :func:`vichat.tiny.config._stage` renames into place
once complete; :mod:`vichat.tiny.build` decides which stages run. torch, transformers and the
trainer are imported inside the functions.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from ..records import VichatError
from .config import TINY_VERSION, TinyConfig, TinyPaths, _Reporter, _stage, _write_json

#: Each stage folder holds this file: how long the stage took and what it reported, so a build
#: resumed after an interruption still reports the stages an earlier process finished.
STAGE_FILE = "stage.json"
#: Share of each adapter's bundled records the trainer validates on (the rest it trains on).
VAL_SIZE = 0.1


def stage_info(folder: Path) -> dict[str, Any]:
    """What a finished stage recorded about itself (empty if nothing)."""
    try:
        return json.loads((folder / STAGE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _finish_stage(tmp: Path, name: str, started: float, **info: Any) -> None:
    _write_json(tmp / STAGE_FILE, {"stage": name, "seconds": round(time.perf_counter() - started, 2),
                                   "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info})


def build_tokenizer(paths: TinyPaths, corpus: Any, cfg: TinyConfig, seed: int) -> None:
    """Byte-level BPE (BLOOM style) on the training split only: held-out text stays unseen."""
    from ..data.tokenizers import train_bpe_tokenizer

    started = time.perf_counter()
    tok = train_bpe_tokenizer(corpus.train, vocab_size=cfg.vocab_size, style="bloom", min_frequency=cfg.min_frequency,
                              max_texts=cfg.tokenizer_max_texts, seed=seed, model_max_length=2048)
    with _stage(paths.tokenizer) as tmp:
        tok.save_pretrained(str(tmp))
        _finish_stage(tmp, "tokenizer", started, vocab_size=len(tok))


def build_base(paths: TinyPaths, corpus: Any, cfg: TinyConfig, seed: int, report_progress: _Reporter,
                say: Callable[[str], None], show: bool) -> None:
    """Pretrain the base from scratch (resuming a checkpoint if any), measure held-out perplexity, save."""
    from transformers import AutoTokenizer

    from .pretrain import encode_stream, heldout_perplexity, make_model, pretrain

    started = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(paths.tokenizer))
    train = encode_stream(tok, corpus.train, show=show, desc="tokenize train")
    heldout = encode_stream(tok, corpus.heldout, show=show, desc="tokenize held-out")
    model = make_model(tok, cfg, seed)

    def on_step(step: int, total: int, loss: float) -> None:
        report_progress("base", step / max(1, total), f"base model: step {step}/{total}, loss {loss:.3f}")

    with _deterministic():
        result = pretrain(model, train, cfg, seed, checkpoint=paths.work / "base-checkpoint", on_step=on_step,
                          show=show, echo=say)
    report_progress.finish("base", "base model trained; measuring held-out perplexity")
    t = time.perf_counter()
    ev = heldout_perplexity(model, heldout, train, len(tok), cfg.seq_len, sum(map(len, corpus.heldout)))
    ev["seconds"] = round(time.perf_counter() - t, 2)
    n_params = sum(p.numel() for p in model.parameters())
    with _stage(paths.base) as tmp, _quiet_hf(not show):
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        _write_json(tmp / "pretrain.json", {
            "parameters": n_params, "vocab_size": len(tok), "train_tokens": len(train),
            "heldout_tokens_total": len(heldout), "training": result.to_dict(), "heldout": ev})
        _finish_stage(tmp, "base", started)
    shutil.rmtree(paths.work / "base-checkpoint", ignore_errors=True)


@contextlib.contextmanager
def _quiet_hf(quiet: bool) -> Iterator[None]:
    """Without progress display, also hide transformers' own bars ("Writing model shards")."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if quiet:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if quiet and was:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def prepare_adapter_data(out: Path, name: str, seed: int, registry: Any) -> dict[str, Any]:
    """Prepare adapter ``name``'s data (its preset's dataset and template) into ``out``: train.jsonl
    and validation.jsonl, as :func:`vichat.data.prepare.prepare` writes them."""
    from ..data.prepare import prepare
    from ..train.presets import get_preset

    preset = get_preset(name)
    return prepare(out, datasets=[preset.values["data"]], template=preset.values["template"], val_size=VAL_SIZE,
                   seed=seed, registry=registry)


def build_adapter(paths: TinyPaths, name: str, seed: int, cfg: TinyConfig, registry: Any,
                  report_progress: _Reporter, say: Callable[[str], None], show: bool) -> dict[str, Any]:
    """Train adapter ``name`` with the trainer on the bundled sample, prepared into a data dir."""
    started = time.perf_counter()
    try:
        from ..train.trainer import run
    except ImportError as exc:
        if exc.name == f"{__package__}.trainer":
            raise VichatError("the LoRA trainer (vichat.train.trainer) is not part of this version, so the tiny "
                              "adapters cannot be built; run `vichat tiny build --no-adapters` for the base "
                              "model alone") from None
        raise
    from ..train.config import build_config
    from ..train.plan import plan
    from ..train.presets import get_preset

    preset = get_preset(name)
    data_dir = paths.work / f"data-{name}"
    if not (data_dir / "manifest.json").exists():
        prepare_adapter_data(data_dir, name, seed, registry)
    work = paths.work / f"adapter-{name}"
    overrides = {"data": str(data_dir), "base_path": str(paths.base), "output_dir": str(work), "seed": seed,
                 "device": "cpu", "resume": "auto", **dict(cfg.adapter_overrides)}
    train_cfg = build_config(name, overrides=overrides)
    total = plan(train_cfg, registry.base_model(train_cfg.base_model)).total_steps or 1
    stage = f"adapter:{name}"
    report_progress(stage, 0.0, f"training adapter {name}")
    say(f"{stage}: LoRA on the bundled sample ({preset.values['data']}), {total} steps")
    with _watch_log(work / "training_log.jsonl", total, stage, name, report_progress):
        result = run(train_cfg, registry=registry, show_progress=show)
    info = {"path": str(paths.adapter(name)), "preset": name, "data": preset.values["data"], "result": _plain(result)}
    with _stage(paths.adapter(name)) as tmp:
        for item in work.iterdir():  # the adapter and its card, not the trainer's resumable checkpoints
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
        _finish_stage(tmp, f"adapter:{name}", started, **info)
    shutil.rmtree(work, ignore_errors=True)
    return info


@contextlib.contextmanager
def _watch_log(log: Path, total: int, stage: str, name: str, report_progress: _Reporter) -> Iterator[None]:
    """Report the trainer's progress (it has no callback) by following its training_log.jsonl.

    The progress hook is then called from this watcher thread; an exception it raises is ignored
    here (the trainer cannot be interrupted from another thread — Ctrl-C still works)."""
    import threading

    stop = threading.Event()

    def follow() -> None:
        last = 0
        while not stop.wait(0.5):
            try:
                lines = log.read_text(encoding="utf-8").splitlines()
                step = max((json.loads(line).get("step", 0) for line in lines if line.strip()), default=0)
            except (OSError, ValueError):
                continue
            if step != last:
                last = step
                try:
                    report_progress(stage, step / total, f"adapter {name}: step {step}/{total}")
                except Exception:  # noqa: BLE001 - a faulty hook must not kill the watcher silently mid-build
                    pass

    thread = threading.Thread(target=follow, name=f"vichat-tiny-{name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def evaluate_heldout(paths: TinyPaths, registry: Any, say: Callable[[str], None]) -> dict[str, Any]:
    """Measure the adapters against the base on the held-out pairs and write ``eval.json``."""
    from .heldout import evaluate_build

    started = time.perf_counter()
    adapters = {name: p for name, p in paths.adapters.items() if (p / "adapter_config.json").exists()}
    result = evaluate_build(paths.base, adapters, registry=registry, echo=say)
    result["seconds"] = round(time.perf_counter() - started, 2)
    _write_json(paths.eval, result)
    return result


def _plain(value: Any) -> Any:
    """A JSON-able view of the trainer's result, whatever shape it has."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    elif hasattr(value, "__dataclass_fields__"):
        value = asdict(value)
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return repr(value)


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def make_report(paths: TinyPaths, sources: list[str], seed: int, cfg: TinyConfig, corpus: Any,
                adapters: Sequence[str], this_run: float, threads: int) -> dict[str, Any]:
    """The build's report.json, assembled from what each stage recorded in its folder."""
    import tokenizers
    import torch
    import transformers

    from .. import __version__

    pre = json.loads((paths.base / "pretrain.json").read_text(encoding="utf-8"))
    timings = {"tokenizer": stage_info(paths.tokenizer).get("seconds"), "base": stage_info(paths.base).get("seconds")}
    try:
        heldout_eval = json.loads(paths.eval.read_text(encoding="utf-8")) if adapters else None
    except (OSError, ValueError):
        heldout_eval = None
    adapter_info = {}
    for name in adapters:
        info = stage_info(paths.adapter(name))
        timings[f"adapter:{name}"] = info.get("seconds")
        adapter_info[name] = {"path": str(paths.adapter(name)), "bytes": _dir_bytes(paths.adapter(name)),
                              **{k: v for k, v in info.items() if k not in ("stage", "seconds", "finished", "path")}}
    if heldout_eval is not None:
        timings["heldout-eval"] = heldout_eval.get("seconds")
    stage_total = sum(v for v in timings.values() if v is not None)
    return {
        "key": paths.root.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "tiny_version": TINY_VERSION,
        "versions": {"vichat": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
        "seed": seed,
        "threads": threads,
        "config": cfg.key_dict(),
        "corpus": {"inputs": sources, **corpus.summary()},
        "tokenizer": {"vocab_size": pre["vocab_size"], "bytes": _dir_bytes(paths.tokenizer)},
        "base": {"path": str(paths.base), "parameters": pre["parameters"], "bytes": _dir_bytes(paths.base),
                 "train_tokens": pre["train_tokens"], "training": pre["training"]},
        "perplexity": pre["heldout"],
        "adapters": adapter_info,
        "heldout_eval": heldout_eval,
        "timings": {**timings, "stages_total": round(stage_total, 2), "this_run": round(this_run, 2)},
    }
