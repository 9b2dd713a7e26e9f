"""The vLLM backend: the `vllm serve` command, LoRA support per base, and the wiring through a fake vLLM.

The process vichat starts here is tests/fake_vllm.py, which takes the same command line and answers
the same endpoints on 127.0.0.1; tests/test_serve_vllm_real.py runs a real vLLM when one is installed.
"""

from __future__ import annotations

import json
import shlex
import socket
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from serve_helpers import tiny_bloom
from vichat.data.templates import CHAT, DOCTOR
from vichat.serve.api import ModelError
from vichat.serve.backends import build_backend
from vichat.serve.config import ConfigError, read_config
from vichat.serve.history import fold_history

from vichat.plugins import get_registry  # noqa: E402

REG = get_registry()  # what the CLI and the app pass to the serve stage

FAKE = Path(__file__).with_name("fake_vllm.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


def gptj_config(tmp_path: Path, port: int, **extra: str) -> Path:
    bloom = tiny_bloom()
    more = "".join(f"\n            {k}: {v}" for k, v in extra.items())
    return write_config(tmp_path, f"""
        backends:
          - type: vllm
            base: gptj-6b-vi
            base_path: /models/gpt-j-6B-vi
            port: {port}
            command: [{json.dumps(sys.executable)}, {json.dumps(str(FAKE))}]
            args: [--gpu-memory-utilization, "0.9"]{more}
            models:
              - {{name: gptj-chat, adapter: {bloom.adapters['a']}, template: chat}}
              - {{name: gptj-doctor, adapter: {bloom.adapters['b']}, template: doctor}}
              - {{name: gptj-base, template: chat}}
        """)


def test_print_vllm_command_registers_every_adapter_as_a_lora_module(tmp_path):
    from vichat.cli import main

    bloom = tiny_bloom()
    path = gptj_config(tmp_path, 8123)
    result = CliRunner().invoke(main, ["serve", "--print-vllm-command", "--config", str(path)])
    assert result.exit_code == 0, result.output
    # r=4 in both adapters' adapter_config.json, rounded up to 8 (the smallest --max-lora-rank vLLM accepts
    # above 1); GPT-J has LoRA in vLLM only through its Transformers backend.
    assert result.output.strip() == shlex.join([
        sys.executable, str(FAKE), "serve", "/models/gpt-j-6B-vi", "--host", "127.0.0.1", "--port", "8123",
        "--served-model-name", "gptj-6b-vi", "--enable-lora", "--max-lora-rank", "8", "--max-loras", "2",
        "--lora-modules", f"gptj-chat={bloom.adapters['a']}", f"gptj-doctor={bloom.adapters['b']}",
        "--model-impl", "transformers", "--gpu-memory-utilization", "0.9"])


def test_the_command_hides_optional_models_whose_adapter_is_missing_and_refuses_a_non_adapter_folder(tmp_path):
    from vichat.serve.vllm import VllmBackend, print_commands

    bloom = tiny_bloom()
    path = write_config(tmp_path, f"""
        - type: vllm
          base: gptj-6b-vi
          models:
            - {{name: gptj-chat, adapter: {bloom.adapters['a']}}}
            - {{name: gptj-doctor, adapter: ./runs/gptj-doctor, optional: true}}
        """)
    note, line = print_commands(read_config(path), REG)
    assert note.startswith("# ") and "models.yaml:6: model 'gptj-doctor' hidden" in note
    assert "--max-loras 1 --lora-modules" in line and "gptj-doctor" not in line
    backend = VllmBackend(read_config(path).backends[0], registry=REG)
    assert [m.name for m in backend.models()] == ["gptj-chat"] and "gptj-doctor" in backend.warnings[0]
    (tmp_path / "runs" / "gptj-doctor").mkdir(parents=True)  # there, but not an adapter
    with pytest.raises(ConfigError, match=r"models\.yaml:6: adapter: .*gptj-doctor holds no readable "
                       r"adapter_config\.json"):
        print_commands(read_config(path), REG)


def test_bloom_adapters_are_refused_with_the_merge_advice_and_merged_models_are_served(tmp_path):
    from vichat.cli import main

    bloom = tiny_bloom()
    path = write_config(tmp_path, f"""
        - type: vllm
          base: bloomz-7b1-mt
          models:
            - {{name: bloomz-chat, adapter: {bloom.adapters['a']}}}
        """)
    with pytest.raises(ConfigError, match=r"models\.yaml:\d+: .*no LoRA adapters for bloom .*vichat export --merge"):
        build_backend(path, registry=REG)
    result = CliRunner().invoke(main, ["serve", "--print-vllm-command", "--config", str(path)])
    assert result.exit_code == 2 and result.output.startswith("error: ") and "vichat export --merge" in result.output
    merged = write_config(tmp_path, """
        - type: vllm
          base: bloomz-7b1-mt
          base_path: ./runs/bloomz-chat-merged
          port: 8001
          dtype: float16
          models: [{name: bloomz-chat, template: chat}]
        """)
    from vichat.serve.vllm import print_commands

    [line] = print_commands(read_config(merged), REG)
    assert line == (f"vllm serve {tmp_path / 'runs/bloomz-chat-merged'} --host 127.0.0.1 --port 8001 "
                    "--served-model-name bloomz-7b1-mt --dtype float16")


def test_the_backend_starts_vllm_and_sends_rendered_prompts_to_each_lora_module(tmp_path, monkeypatch):
    log = tmp_path / "fake-vllm.jsonl"
    monkeypatch.setenv("FAKE_VLLM_LOG", str(log))
    backend = build_backend(gptj_config(tmp_path, free_port(), startup_timeout=60), registry=REG)
    try:
        assert {m.name: m.backend for m in backend.models()} == {"gptj-chat": "vllm", "gptj-doctor": "vllm",
                                                                  "gptj-base": "vllm"}
        backend.prepare()  # starts tests/fake_vllm.py with the command above and waits for /v1/models
        answers = {name: "".join(backend.stream(name, "Xin chào", [("Câu trước", "Đáp trước")]))
                   for name in ("gptj-chat", "gptj-doctor", "gptj-base")}
        owner = backend.backend_for("gptj-chat")
        process = owner.process
        assert process is not None and process.poll() is None
    finally:
        backend.close()
    assert process.wait(10) is not None  # the server vichat started is stopped with it
    lines = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines()]
    argv = lines[0]["argv"]
    assert argv[argv.index("--lora-modules") + 1].startswith("gptj-chat=")
    requests = [x["body"] for x in lines[1:]]
    # Adapters are requested by their LoRA module's name, the bare base by its served name.
    assert [r["model"] for r in requests] == ["gptj-chat", "gptj-doctor", "gptj-6b-vi"]
    assert requests[0]["prompt"] == fold_history(CHAT, "Xin chào", [("Câu trước", "Đáp trước")])
    assert requests[1]["prompt"] == fold_history(DOCTOR, "Xin chào", [("Câu trước", "Đáp trước")])
    assert all("### Instruction:" in r["stop"] and r["stream"] for r in requests)
    # The paper's decoding (the base's defaults): vLLM reads top_k and repetition_penalty from the body.
    assert (requests[0]["temperature"], requests[0]["top_k"], requests[0]["repetition_penalty"]) == (0.5, 20, 1.2)
    # The made-up next turn the fake server streams is never shown, even split over chunks.
    assert answers == {"gptj-chat": "gptj-chat trả lời: Xin chào!", "gptj-doctor": "gptj-doctor trả lời: Xin chào!",
                       "gptj-base": "gptj-6b-vi trả lời: Xin chào!"}


def test_starting_vllm_with_an_empty_cuda_visible_devices_warns(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    backend = build_backend(gptj_config(tmp_path, free_port(), startup_timeout=60), registry=REG)
    try:
        with caplog.at_level("WARNING", logger="vichat.serve"):
            backend.prepare()
        owner = backend.backend_for("gptj-chat")
        assert any("CUDA_VISIBLE_DEVICES is set but empty" in w and "unset it" in w for w in owner.warnings)
        assert "CUDA_VISIBLE_DEVICES" in caplog.text
    finally:
        backend.close()


def test_connect_without_starting_and_a_clear_error_when_nothing_answers(tmp_path):
    port = free_port()
    backend = build_backend(gptj_config(tmp_path, port, start="false"), registry=REG)
    with pytest.raises(ModelError, match=rf"no server answers at http://127.0.0.1:{port}/v1 \(start it with "
                                         r"`.*fake_vllm.py serve /models/gpt-j-6B-vi"):
        backend.prepare()
    backend.close()


# What vLLM 0.32 (CPU build) logs when it refuses LoRA for BLOOM: the root cause, then the engine's
# own failure last (tests/test_serve_vllm_real.py starts the real one when it is installed).
BLOOM_REFUSAL = """\
(APIServer pid=1) WARNING 12-01 18:53:09 [system_utils.py:255] Found ulimit of 20000 and failed to automatically \
increase with error current limit exceeds maximum limit. This can cause fd limit errors like `OSError: [Errno 24] \
Too many open files`. Consider increasing with ulimit -n
(Worker pid=2) ERROR 12-01 18:53:35 [multiproc_executor.py:953]     raise ValueError(f"{model.__class__.__name__} \
does not support LoRA yet.")
(Worker pid=2) ERROR 12-01 18:53:35 [multiproc_executor.py:953] ValueError: BloomForCausalLM does not support LoRA yet.
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {}
"""


def test_a_failed_start_names_vllms_root_cause_and_what_to_do(tmp_path, monkeypatch):
    from vichat.serve.vllm import vllm_rank

    assert [vllm_rank(r) for r in (1, 2, 8, 12, 64, 100, 600)] == [1, 8, 8, 16, 64, 128, 600]
    with pytest.raises(ConfigError, match=r"models\.yaml:\d+: max_lora_rank: vLLM refuses 4; use one of 1, 8, 16"):
        build_backend(gptj_config(tmp_path, free_port(), max_lora_rank=4), registry=REG).backend_for("gptj-chat").command
    monkeypatch.setenv("FAKE_VLLM_FAIL", BLOOM_REFUSAL)
    backend = build_backend(gptj_config(tmp_path, free_port(), startup_timeout=60), registry=REG)
    try:
        with pytest.raises(ModelError, match=r"exited with code 1: BloomForCausalLM does not support LoRA yet\. "
                                             r"This vLLM has no LoRA .*vichat export --merge.*Log: .*\(log: "):
            backend.prepare()
    finally:
        backend.close()
