"""Shared set-up of the training tests: tiny random BLOOM and GPT-J models, a tokenizer, prepared data.

Not a conftest pytest loads by itself: test modules import the fixtures they use
(``from conftest_train import tiny, one_thread``). The world is built once per session (a module
cache keyed by the session's temp folder), however many modules import the fixture.

The models are real transformers architectures with random weights, saved with
``save_pretrained`` and loaded through the registered specs ``bloomz-560m`` / ``gptj-6b-vi`` with
``base_path`` pointing at the tiny folder, so the LoRA targets (query_key_value; q_proj, v_proj)
and the tokenizer fixes (GPT-J: pad = EOS) are the real ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

_CACHE: dict[str, "TinyWorld"] = {}


@dataclass(frozen=True)
class TinyWorld:
    root: Path
    bloom: Path  # model + tokenizer folder (bloom-style tokenizer, has <pad>)
    gptj: Path  # model + tokenizer folder (gptj-style tokenizer: no pad token)
    data: Path  # prepared folder: 48 train / 16 validation records

    def config(self, out: Path, family: str = "bloom", **overrides: Any):
        """A fast TrainConfig on the tiny model (1 process, fp32, CPU)."""
        from vichat.train.config import TrainConfig

        base = {"bloom": ("bloomz-560m", self.bloom), "gptj": ("gptj-6b-vi", self.gptj)}[family]
        cfg = TrainConfig(
            base_model=base[0], base_path=str(base[1]), data=str(self.data), output_dir=str(out), device="cpu",
            load_in="none", compute_dtype="fp32", max_length=96, total_batch_size=8, micro_batch_size=2, epochs=2,
            learning_rate=1e-2, warmup_steps=2, logging_steps=1, eval_steps=3, save_steps=3, save_total_limit=10,
            group_by_length=True, gradient_checkpointing=False, zero_stage=2,
        )
        return replace(cfg, **overrides)

    def cli_args(self, out: Path, **overrides: Any) -> list[str]:
        """The same settings as flags for ``python -m vichat.train.launch`` (BLOOM)."""
        values = {
            "base-model": "bloomz-560m", "base-path": str(self.bloom), "data": str(self.data), "output-dir": str(out),
            "device": "cpu", "load-in": "none", "compute-dtype": "fp32", "max-length": 96, "total-batch-size": 8,
            "micro-batch-size": 2, "epochs": 2, "learning-rate": 1e-2, "warmup-steps": 2, "logging-steps": 1,
            "eval-steps": 3, "save-steps": 3, "save-total-limit": 10, "zero-stage": 2,
        }
        values.update({k.replace("_", "-"): v for k, v in overrides.items()})
        args = ["--group-by-length", "--no-gradient-checkpointing"]
        for k, v in values.items():
            args += [f"--{k}", str(v)]
        return args


def _build(root: Path) -> TinyWorld:
    import torch
    from transformers import BloomConfig, BloomForCausalLM, GPTJConfig, GPTJForCausalLM

    from vichat.data.prepare import prepare
    from vichat.plugins import get_registry
    from vichat.data.tokenizers import sample_texts, train_bpe_tokenizer

    texts = sample_texts()
    folders = {}
    for style in ("bloom", "gptj"):
        tok = train_bpe_tokenizer(texts, vocab_size=800, style=style)
        torch.manual_seed(0)
        if style == "bloom":
            model = BloomForCausalLM(BloomConfig(n_layer=2, hidden_size=64, n_head=4, vocab_size=len(tok),
                                                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                                 pad_token_id=tok.pad_token_id))
        else:
            model = GPTJForCausalLM(GPTJConfig(n_layer=2, n_embd=64, n_head=4, rotary_dim=8, n_positions=512,
                                               vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                               eos_token_id=tok.eos_token_id))
        folders[style] = root / f"tiny-{style}"
        model.save_pretrained(folders[style])
        tok.save_pretrained(folders[style])
    prepare(root / "data", datasets=["vi-sample-chat"], limits={"vi-sample-chat": 64}, val_size=16, seed=1,
            registry=get_registry())
    return TinyWorld(root, folders["bloom"], folders["gptj"], root / "data")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> TinyWorld:
    """The tiny models and data (built once per session)."""
    key = str(tmp_path_factory.getbasetemp())
    if key not in _CACHE:
        _CACHE[key] = _build(tmp_path_factory.mktemp("tiny-train"))
    return _CACHE[key]


@pytest.fixture
def one_thread():
    """One torch thread: on a small shared CPU, OpenMP threads spinning against another busy process
    make a tiny model 100x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def subprocess_env(tmp: Path) -> dict[str, str]:
    """Environment for training subprocesses: one thread, quiet, caches in the test's temp folder."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               VICHAT_CACHE_DIR=str(tmp / "cache"), TRANSFORMERS_VERBOSITY="error")
    return env


def run_python(args: list[str], tmp: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([PY, *args], cwd=REPO, env=subprocess_env(tmp), capture_output=True, text=True,
                          timeout=timeout)


def train_registry():
    from vichat.plugins import get_registry

    return get_registry()
