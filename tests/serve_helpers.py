"""Shared by tests/test_serve_*.py: a tiny random BLOOM, its BPE tokenizer and two random LoRA adapters.

Built once per test session (memoised here rather than in conftest.py so the serving tests stay
self-contained); a few seconds on two cores.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

_lock = threading.Lock()
_cache: dict[str, "TinyBloom"] = {}


@dataclass(frozen=True)
class TinyBloom:
    root: Path
    base: Path
    adapters: dict[str, Path]  # name -> adapter folder


def tokenizer():
    """A byte-level BPE tokenizer (style ``bloom``) trained on the bundled sample, cached per session."""
    from vichat.data.tokenizers import sample_texts, train_bpe_tokenizer

    with _lock:
        if "tok" not in _cache:
            _cache["tok"] = train_bpe_tokenizer(sample_texts(), vocab_size=600, style="bloom")
        return _cache["tok"]


def random_adapters(base: Path, root: Path, names, targets: list[str], r: int = 8) -> dict[str, Path]:
    """LoRA adapters with random weights (``init_lora_weights=False``, so each changes the output) on the
    model saved in ``base``, one per name, saved as ``root/adapter-NAME``; seeded 100, 101, ..."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapters = {}
    for i, name in enumerate(names):
        torch.manual_seed(100 + i)
        lora = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)),
                              LoraConfig(r=r, lora_alpha=16, target_modules=list(targets), init_lora_weights=False,
                                         task_type="CAUSAL_LM"))
        adapters[name] = root / f"adapter-{name}"
        lora.save_pretrained(str(adapters[name]))
    return adapters


def tiny_bloom() -> TinyBloom:
    """BLOOM (2 layers, hidden 64, 4 heads) with random weights plus adapters ``a`` and ``b``
    (``init_lora_weights=False``: random, so each changes the output)."""
    with _lock:
        if "bloom" in _cache:
            return _cache["bloom"]
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    tok = tokenizer()
    root = Path(tempfile.mkdtemp(prefix="vichat-serve-test-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    # initializer_range=1.0: with BLOOM's 0.02 a random model repeats one token ("\n") forever;
    # large weights give varied text, including byte tokens that do not form whole characters.
    config = BloomConfig(vocab_size=len(tok), hidden_size=64, n_layer=2, n_head=4, initializer_range=1.0,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = BloomForCausalLM(config)
    base = root / "base"
    model.save_pretrained(str(base))
    tok.save_pretrained(str(base))
    adapters = random_adapters(base, root, ("a", "b"), ["query_key_value"], r=4)
    built = TinyBloom(root, base, adapters)
    with _lock:
        _cache["bloom"] = built
    return built


def local_config(bloom: TinyBloom, seed: int | None = None):
    """A local backend config serving ``a``, ``b`` and the bare base (``bare``) from one BLOOM."""
    from vichat.serve.config import LocalBackendConfig, ModelConfig

    return LocalBackendConfig(
        base="bloomz-560m",  # any registered BLOOM spec: the weights come from ``path``
        base_path=str(bloom.base),
        models=(ModelConfig(name="a", adapter=str(bloom.adapters["a"]), template="chat"),
                ModelConfig(name="b", adapter=str(bloom.adapters["b"]), template="doctor"),
                ModelConfig(name="bare", adapter=None, template="chat")),
        seed=seed,
    )


class ScriptedModel:
    """A stand-in causal LM that emits ``script`` token by token whatever it is fed (one-hot logits),
    then ``after`` forever. Records every call's first row of input ids; ``delay`` seconds per step;
    ``fail`` makes the next call raise. Rows of one batch share the script (a step count per cache)."""

    def __init__(self, vocab_size: int, script: list[int], after: int | None = None, delay: float = 0.0) -> None:
        import torch

        self.vocab_size, self.script, self.after, self.delay = vocab_size, list(script), after, delay
        self.calls: list[list[int]] = []
        self.fail = False
        self._steps: dict[int, int] = {}
        self._emb = torch.nn.Embedding(vocab_size, 1)

    def get_input_embeddings(self):
        return self._emb

    def forward(self, input_ids=None, attention_mask=None, cache=None, use_cache=True, logits_to_keep=0, **kwargs):
        import time
        from types import SimpleNamespace

        import torch

        if self.fail:
            self.fail = False
            raise RuntimeError("scripted failure")
        if self.delay:
            time.sleep(self.delay)
        row = input_ids[0]
        if attention_mask is not None:  # the fed tokens of row 0, without left padding
            row = row[attention_mask[0, -input_ids.shape[1]:].bool()]
        self.calls.append(row.tolist())
        step = self._steps.get(id(cache), 0)
        self._steps[id(cache)] = step + 1
        token = self.script[step] if step < len(self.script) else (self.after if self.after is not None else 0)
        logits = torch.full((input_ids.shape[0], 1, self.vocab_size), -10.0)
        logits[:, -1, token] = 10.0
        return SimpleNamespace(logits=logits)

    __call__ = forward


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable-symbol table, which byte-level BPE vocabularies use."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_token_ids(tok, text: str) -> list[int]:
    """One token per UTF-8 byte (byte-level BPE has them all): the worst split a model can produce."""
    table = bytes_to_unicode()
    return tok.convert_tokens_to_ids([table[b] for b in text.encode("utf-8")])
