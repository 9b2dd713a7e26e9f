"""The adapter's model card (README.md) and its loss-curve PNG."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

LOSS_CURVE = "loss_curve.png"


def plot_loss_curve(log: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Train loss (every logged step) and validation loss (every evaluation) against the step.

    Uses matplotlib's Agg backend (no display needed). Returns None when nothing was logged."""
    train = [(e["step"], e["loss"]) for e in log if "loss" in e]
    val = [(e["step"], e["val_loss"]) for e in log if e.get("val_loss") is not None]
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", linewidth=1.2, markersize=4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (per response token)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    return str(value)


def _loss(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in ("vichat", "torch", "transformers", "peft", "deepspeed", "bitsandbytes"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def model_card(
    *,
    base_model: str,
    base_ref: str,
    config: Mapping[str, Any],
    batch: Mapping[str, Any],
    data: Mapping[str, Any],
    results: Mapping[str, Any],
    lora_targets: Sequence[str],
    trainable_params: int,
    total_params: int,
    license: str = "",
) -> str:
    """The README.md of an adapter folder: how to load it, the data, every setting, the results."""
    front = ["---", "library_name: peft", f"base_model: {base_ref}", "language:", "- vi",
             "pipeline_tag: text-generation", "tags:", "- lora", "- vichat"]
    if license:
        front.append(f"license: {license}")
    front.append("---")
    pct = 100 * trainable_params / total_params if total_params else 0.0
    sources = "; ".join(f"{s.get('key')}: {s.get('dataset')} ({_fmt(s.get('used'))} used)"
                        for s in data.get("sources") or []) or "—"
    lines = [
        *front,
        "",
        f"# LoRA adapter for {base_model}",
        "",
        f"A LoRA adapter trained with vichat on `{base_ref}` (vichat base model `{base_model}`), "
        f"prompt template `{config.get('template')}`.",
        "",
        "## Load it",
        "",
        "Plain transformers + peft, no vichat needed:",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base_ref}")',
        'model = PeftModel.from_pretrained(base, "PATH/TO/THIS/FOLDER")',
        'tokenizer = AutoTokenizer.from_pretrained("PATH/TO/THIS/FOLDER")',
        "```",
        "",
        "`vichat export THIS_FOLDER --merge --out DIR` writes a merged model for serving.",
        "",
        "## Data",
        "",
        "| | |",
        "|---|---|",
        f"| prepared folder | `{data.get('folder')}` |",
        f"| mixture | {_fmt(data.get('mixture'))} |",
        f"| sources | {sources} |",
        f"| training records | {_fmt(data.get('train_records'))} |",
        f"| validation records | {_fmt(data.get('validation_records'))} |",
        f"| truncated to max length | {_fmt(data.get('truncated'))} |",
        f"| manifest sha256 | `{data.get('manifest_sha256') or '—'}` |",
        f"| train.jsonl sha256 | `{data.get('train_sha256') or '—'}` |",
        "",
        "The loss is computed on the response tokens (and the final EOS) only, never on the prompt.",
        "",
        "## Results",
        "",
        "| | |",
        "|---|---|",
        f"| trainable parameters | {trainable_params:,} ({pct:.3f}% of {total_params:,}) |",
        f"| LoRA targets | {', '.join(lora_targets)} |",
        f"| optimizer steps | {_fmt(results.get('global_step'))} of {_fmt(results.get('total_steps'))} |",
        f"| final train loss | {_loss(results.get('final_train_loss'))} |",
        f"| final validation loss | {_loss(results.get('final_val_loss'))} |",
        f"| wall time | {results.get('wall_seconds', 0):,.1f} s (of which training steps {results.get('train_seconds', 0):,.1f} s) |",
        f"| useful tokens | {_fmt(results.get('tokens_seen'))} (non-padding, all processes) |",
        f"| tokens per second | {results.get('tokens_per_second', 0):,.0f} |",
        f"| processes | {_fmt(batch.get('world'))} ({'DeepSpeed ZeRO-' + str(config.get('zero_stage')) if (batch.get('world') or 1) > 1 else 'single process'}, device {config.get('device')}) |",
        "",
        f"![loss curve]({LOSS_CURVE})",
        "",
        "## Hyperparameters",
        "",
        f"Batch: {batch.get('total')} examples per optimizer step = micro-batch {batch.get('micro')} x gradient "
        f"accumulation {batch.get('accumulation')} x {batch.get('world')} process(es); batching: {batch.get('mode')}.",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {k} | {_fmt(v)} |" for k, v in config.items()],
        "",
        "## Software",
        "",
        *[f"- {k} {v}" for k, v in _versions().items()],
        "",
    ]
    return "\n".join(lines)
