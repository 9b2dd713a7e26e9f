"""The adapter's model card (README.md) and its loss-curve PNG."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

LOSS_CURVE = "loss_curve.png"

#: License ids the Hugging Face Hub accepts in a card's ``license:`` (https://huggingface.co/docs/hub/repositories-licenses).
HF_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5
cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0
cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl
lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl
openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license
fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma unknown other
""".split())


def hf_license(text: str) -> str:
    """The Hub license id for a spec's free-text licence: itself when it is one (any case), the id it
    starts with (``"Apache-2.0 (part of vichat)"`` -> ``apache-2.0``), else ``other``; "" for none."""
    low = (text or "").strip().lower()
    if not low:
        return ""
    if low in HF_LICENSES:
        return low
    first = re.split(r"[\s(;,]", low, maxsplit=1)[0]
    return first if first in HF_LICENSES else "other"


def _data_rows(data: Mapping[str, Any]) -> list[str]:
    """The card's line naming the data: ``file PATH`` for the user's own file(s) (``--data my.jsonl``,
    prepared as an ad hoc mixture named after the file), else ``mixture NAME``."""
    from ..data.loading import looks_like_path

    refs = [str(s.get("dataset") or "") for s in data.get("sources") or []]
    if refs and all(r and (looks_like_path(r) or Path(r).expanduser().exists()) for r in refs):
        label = "file" if len(refs) == 1 else "files"
        return [f"| {label} | {', '.join(f'`{r}`' for r in refs)} |"]
    return [f"| mixture | {_fmt(data.get('mixture'))} |"]


def _resumed_rows(results: Mapping[str, Any]) -> list[str]:
    """A line saying the run was resumed, and from which checkpoint (``train_result.json``'s
    ``resumed_from``, the checkpoint folder): nothing for a run that went through in one go."""
    where = results.get("resumed_from")
    if not where:
        return []
    m = re.search(r"checkpoint-(\d+)$", str(where).rstrip("/\\"))
    step = f" at step {int(m.group(1)):,}" if m else ""
    return [f"| resumed | yes: from `{where}`{step} (wall time and tokens include the work up to it) |"]


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
    """The README.md of an adapter folder: how to load it, the data, every setting, the results.

    ``base_ref``: what the adapter records as its base (the folder it was really loaded from, or
    the hub id). ``license`` (the base model spec's) goes into the front matter as a Hub license id."""
    front = ["---", "library_name: peft", f"base_model: {base_ref}", "language:", "- vi",
             "pipeline_tag: text-generation", "tags:", "- lora", "- vichat"]
    license_id = hf_license(license)
    if license_id:
        front.append(f"license: {license_id}")
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
        *([f"License: {license.strip()} (the base model's).", ""] if license_id and license.strip().lower() != license_id
          else []),
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
        *_data_rows(data),
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
        *_resumed_rows(results),
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
