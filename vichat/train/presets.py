"""Named starting points for `vichat train PRESET`: the paper's four runs and two tiny smoke runs.

The paper (section IV-B): LoRA r=8 (alpha 16 and dropout 0.05 are alpaca-lora's defaults, the
codebase the paper used), int8 base weights, max length 512, Adam, total batch 128, lr 3e-4,
2 epochs, 4 x RTX-4090-24GB with DeepSpeed. "chat" = Alpaca + GPT4All with the chat template;
"doctor" = Alpaca + ChatDoctor with the doctor template.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Mapping

from ..data.tokenize import MAX_LENGTH
from ..records import VichatError

PAPER: Mapping[str, Any] = {
    "lora_r": 8,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "max_length": MAX_LENGTH,
    "learning_rate": 3e-4,
    "optimizer": "adamw_torch",
    "epochs": 2,
    "total_batch_size": 128,
    "gpus": 4,
    "load_in": "8bit",
    "compute_dtype": "fp16",
    "gradient_checkpointing": True,
    "zero_stage": 2,
    "warmup_steps": 100,
}

# A smoke run on one device: the tiny base, full-precision weights, the bundled Vietnamese sample
# (the datasets vi-sample-chat / vi-sample-doctor; `vichat tiny build` prepares them by name).
TINY: Mapping[str, Any] = {
    "base_model": "tiny",
    "load_in": "none",
    "compute_dtype": "auto",
    "max_length": 256,
    "total_batch_size": 16,
    "epochs": 2,
    "gpus": 1,
    "zero_stage": 0,
    "gradient_checkpointing": False,
    "warmup_steps": 5,  # the paper's 100 would outlast a run of a few dozen steps
    "logging_steps": 1,
    "eval_steps": 20,
    "save_steps": 20,
}


@dataclass(frozen=True)
class Preset:
    """A preset: a name, a one-line description and the settings it overrides."""

    name: str
    description: str
    values: Mapping[str, Any]


def _preset(name: str, description: str, *parts: Mapping[str, Any], **extra: Any) -> Preset:
    values: dict[str, Any] = {}
    for part in parts:
        values.update(part)
    values.update(extra)
    return Preset(name, description, values)


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _preset("bloomz-chat", "Bloomz-Chat: bloomz-7b1-mt, Alpaca + GPT4All, chat template (paper).",
                PAPER, base_model="bloomz-7b1-mt", data="chat", template="chat"),
        _preset("bloomz-doctor", "Bloomz-Doctor: bloomz-7b1-mt, Alpaca + ChatDoctor, doctor template (paper).",
                PAPER, base_model="bloomz-7b1-mt", data="doctor", template="doctor"),
        _preset("gptj-chat", "GPTJ-Chat: VietAI gpt-j-6B, Alpaca + GPT4All, chat template (paper).",
                PAPER, base_model="gptj-6b-vi", data="chat", template="chat"),
        _preset("gptj-doctor", "GPTJ-Doctor: VietAI gpt-j-6B, Alpaca + ChatDoctor, doctor template (paper).",
                PAPER, base_model="gptj-6b-vi", data="doctor", template="doctor"),
        _preset("tiny-chat", "Smoke run: tiny base, bundled Vietnamese chat sample, one CPU/GPU, minutes.",
                PAPER, TINY, data="vi-sample-chat", template="chat"),
        _preset("tiny-doctor", "Smoke run: tiny base, bundled Vietnamese doctor sample, one CPU/GPU, minutes.",
                PAPER, TINY, data="vi-sample-doctor", template="doctor"),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name is an error with the closest match and the list."""
    try:
        return PRESETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(PRESETS), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise VichatError(f"no training preset named {name!r}.{hint} Presets: {', '.join(PRESETS)}.") from None


def preset_outputs(runs_dir: str = "runs") -> dict[str, str]:
    """Where ``vichat train PRESET`` writes each preset's adapter by default (``runs/<preset>``):
    other commands accept a preset name for its trained adapter."""
    return {name: f"{runs_dir}/{name}" for name in PRESETS}
