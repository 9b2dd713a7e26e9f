"""The models configuration: format, errors with file:line, the environment override, the defaults."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest

from serve_helpers import tiny_bloom
from vichat.serve.api import ModelError
from vichat.serve.backends import CompositeBackend, build_backend
from vichat.serve.engine import LocalEngine
from vichat.serve.config import (ConfigError, LocalBackendConfig, RemoteBackendConfig, default_config, hub_reachable,
                                 load_config, packaged_config, parse_config)
from vichat.specs import Decoding

from vichat.plugins import get_registry  # noqa: E402

REG = get_registry()  # what the CLI and the app pass to the serve stage

EXAMPLE = """
# two backends: a local base with adapters, and a vLLM server
backends:
  - base: bloomz-7b1-mt
    base_path: ./weights/bloomz
    load_in: 8bit
    models:
      - name: bloomz-chat
        adapter: adapters/bloomz-chat
        template: chat
        description: Bloomz-Chat
        decoding: {temperature: 0.7, max_new_tokens: 128}
      - name: bloomz
        adapter: null
  - base_url: ${VICHAT_TEST_URL:-http://localhost:8000/v1}
    api_key_env: VLLM_API_KEY
    api: chat
    models:
      - {name: gptj-doctor, model: gptj-doctor-lora, template: doctor, stop: ["</s>"]}
"""


def test_example_file_parses_with_paths_env_and_overrides(tmp_path, monkeypatch):
    (tmp_path / "adapters" / "bloomz-chat").mkdir(parents=True)
    monkeypatch.setenv("VICHAT_TEST_URL", "http://gpu:9000/v1")
    cfg = parse_config(EXAMPLE, "models.yaml", tmp_path)
    local, remote = cfg.backends
    assert isinstance(local, LocalBackendConfig) and isinstance(remote, RemoteBackendConfig)
    assert local.base == "bloomz-7b1-mt" and local.load_in == "8bit"
    assert local.base_path == str(tmp_path / "weights" / "bloomz")  # "./" is always a path, relative to the file
    chat, bare = local.models
    assert chat.adapter == str(tmp_path / "adapters" / "bloomz-chat") and bare.adapter is None
    assert chat.decoding_over(Decoding()) == Decoding(max_new_tokens=128, temperature=0.7)
    assert chat.where == "models.yaml:8"
    assert remote.base_url == "http://gpu:9000/v1" and remote.api == "chat" and remote.api_key_env == "VLLM_API_KEY"
    assert remote.models[0].model == "gptj-doctor-lora" and remote.models[0].stop == ("</s>",)
    assert cfg.model_names() == ["bloomz-chat", "bloomz", "gptj-doctor"]
    # A list at the top level is the same thing; a hub id stays a hub id.
    top = parse_config("- base: bloomz-560m\n  models:\n    - {name: x, adapter: someone/some-adapter}\n")
    assert top.backends[0].models[0].adapter == "someone/some-adapter"


@pytest.mark.parametrize("text, message", [
    ("backends:\n  - base: tiny\n    models:\n      - name: a\n        adaptr: x\n",
     r"<t>:5: backends\[0\]\.models\[0\]\.adaptr: unknown key 'adaptr' \(did you mean 'adapter'\?\)"),
    ("backends:\n  - base: tiny\n    models:\n      - name: Bad Name\n",
     r"<t>:4: backends\[0\]\.models\[0\]\.name: 'Bad Name' is not a valid model name"),
    ("backends:\n  - base: tiny\n    models:\n      - name: a\n        decoding: {top_p: 2}\n",
     r"<t>:5: backends\[0\]\.models\[0\]\.decoding\.top_p: must be in \(0, 1\]"),
    ("backends:\n  - base: tiny\n    models:\n      - name: a\n        adapter: ${VICHAT_UNSET_VAR}\n",
     r"<t>:5: .*environment variable VICHAT_UNSET_VAR is not set"),
    ("backends:\n  - base_url: ftp://x\n    models: [{name: a}]\n", r"<t>:2: backends\[0\]\.base_url: 'ftp://x' is not an http"),
    ("backends:\n  - base_url: http://x/v1\n    models: [{name: a, adapter: p}]\n",
     r"remote models have no adapter"),
    ("backends:\n  - models: [{name: a}]\n", r"<t>:2: backends\[0\]: type None: a backend is local"),
    ("backends: []\n", r"expected a non-empty list of backends"),
    ("backends:\n  - base: tiny\n    models: [{name: a}\n", r"<t>:\d+: not valid YAML"),
    ("backends:\n  - base: tiny\n    max_batch_size: 0\n    models: [{name: a}]\n",
     r"<t>:3: backends\[0\]\.max_batch_size: .*1"),
    ("backends:\n  - type: vllm\n    base: tiny\n    lora: maybe\n    models: [{name: a}]\n",
     r"<t>:4: backends\[0\]\.lora: .*auto"),
    ("backends:\n  - type: vllm\n    base: tiny\n    prefill_chunk: 8\n    models: [{name: a}]\n",
     r"<t>:4: backends\[0\]\.prefill_chunk: unknown key"),
])
def test_errors_name_the_file_line_and_field(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(text, "<t>")


def test_a_missing_adapter_folder_is_caught_when_the_file_is_read_unless_optional(tmp_path):
    text = "backends:\n  - base: tiny\n    models:\n      - name: a\n        adapter: ./nope{}\n"
    with pytest.raises(ConfigError, match=r"m.yaml:5: backends\[0\]\.models\[0\]\.adapter: the adapter folder "
                       r".*nope does not exist: .*`optional: true`"):
        parse_config(text.format(""), "m.yaml", tmp_path)
    optional = parse_config(text.format("\n        optional: true"), "m.yaml", tmp_path)
    assert optional.backends[0].models[0].adapter == str(tmp_path / "nope")  # the engine hides it, with a warning
    (tmp_path / "nope").mkdir()
    assert parse_config(text.format(""), "m.yaml", tmp_path).backends[0].models[0].adapter == str(tmp_path / "nope")


def test_a_file_that_is_not_utf8_is_a_config_error_with_its_line(tmp_path):
    from vichat.serve.config import read_config

    bad = tmp_path / "m.yaml"
    bad.write_bytes("backends:\n  - base: tiny\n    models: [{name: a, description: ".encode() + b"caf\xe9}]\n")
    with pytest.raises(ConfigError, match=r"m.yaml:3: the models configuration is not UTF-8 text \(byte 0xe9"):
        read_config(bad)


def test_the_old_path_key_still_reads_as_base_path_with_a_warning(tmp_path):
    with pytest.warns(FutureWarning, match=r"m.yaml:2: 'path' is renamed 'base_path'"):
        cfg = parse_config("- base: bloomz-560m\n  path: ./w\n  models:\n    - name: x\n", "m.yaml", tmp_path)
    assert cfg.backends[0].base_path == str(tmp_path / "w")
    with pytest.raises(ConfigError, match="give base_path only"):
        parse_config("- base: bloomz-560m\n  path: ./w\n  base_path: ./w\n  models:\n    - name: x\n", "m.yaml", tmp_path)


def test_batch_limits_are_read_from_the_file():
    config = parse_config("- base: tiny\n  max_batch_size: 4\n  max_batch_tokens: 2048\n  prefill_chunk: 64\n"
                          "  models: [{name: a}]\n", "<t>")
    b = config.backends[0]
    assert (b.max_batch_size, b.max_batch_tokens, b.prefill_chunk) == (4, 2048, 64)
    assert LocalEngine(b, registry=REG).config.max_batch_size == 4


def test_unknown_base_models_and_templates_are_config_errors():
    with pytest.raises(ConfigError, match=r"<t>:1: base: no base model named 'bloomz-7b'.*Did you mean 'bloomz-7b1-mt'"):
        build_backend(parse_config("- base: bloomz-7b\n  models: [{name: a}]\n", "<t>"), registry=REG)
    with pytest.raises(ConfigError, match=r"<t>:3: model 'a': template: no template named 'chatt'. Did you mean 'chat'"):
        build_backend(parse_config("- base_url: http://x/v1\n  models:\n    - {name: a, template: chatt}\n", "<t>"), registry=REG)


def test_model_names_must_be_unique_across_backends():
    text = ("backends:\n  - base: tiny\n    models: [{name: same}]\n"
            "  - base_url: http://x/v1\n    models: [{name: same}]\n")
    with pytest.raises(ConfigError, match=r"model name 'same' is used twice: <t>:3 in local backend 'tiny' .* and "
                                          r"<t>:5 in remote backend 'http://x/v1'"):
        parse_config(text, "<t>")


def test_env_var_names_the_file_and_a_missing_one_is_an_error(tmp_path, monkeypatch):
    path = tmp_path / "mine.yaml"
    path.write_text("- base_url: http://x/v1\n  models: [{name: mine}]\n", encoding="utf-8")
    monkeypatch.setenv("VICHAT_MODELS_CONFIG", str(path))
    assert load_config().model_names() == ["mine"] and load_config().source == str(path)
    monkeypatch.setenv("VICHAT_MODELS_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ConfigError, match="VICHAT_MODELS_CONFIG=.*missing.yaml: no such file"):
        load_config()


def test_offline_default_is_the_tiny_model(monkeypatch):
    monkeypatch.delenv("VICHAT_MODELS_CONFIG", raising=False)
    monkeypatch.setenv("VICHAT_OFFLINE", "1")
    t0 = time.perf_counter()
    cfg = load_config()
    assert time.perf_counter() - t0 < 1.0  # no network wait when told offline
    (backend,) = cfg.backends
    assert backend.base == "tiny" and backend.base_path is None
    assert [(m.name, m.adapter, m.template) for m in backend.models] == [
        ("tiny-chat", "tiny-chat", "chat"), ("tiny-doctor", "tiny-doctor", "doctor"), ("tiny", None, "chat")]
    assert "tiny" in cfg.notes[0]
    b = build_backend(cfg, registry=REG)  # nothing is built or loaded until prepare() or the first request
    assert [m.name for m in b.models()] == ["tiny-chat", "tiny-doctor", "tiny"]
    assert not b.backends[0].loaded


def test_online_defaults_pick_by_gpu_and_hide_untrained_adapters(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for var in ("VICHAT_BLOOMZ_CHAT_ADAPTER", "VICHAT_BLOOMZ_560M_CHAT_ADAPTER"):
        monkeypatch.delenv(var, raising=False)
    paper = default_config(online=True, gpu=True)
    assert paper.model_names() == ["bloomz-chat", "bloomz-doctor", "gptj-chat", "gptj-doctor"]
    assert [b.base for b in paper.backends] == ["bloomz-7b1-mt", "gptj-6b-vi"]
    with pytest.raises(ConfigError, match="no model to serve.*bloomz-chat.*vichat train"):
        build_backend(paper, registry=REG)  # none of the paper's adapters has been trained here
    (tmp_path / "runs" / "bloomz-chat").mkdir(parents=True)
    monkeypatch.setenv("VICHAT_GPTJ_DOCTOR_ADAPTER", "someone/gptj-doctor-lora")  # a hub id: kept
    b = build_backend(default_config(online=True, gpu=True), registry=REG)
    assert [m.name for m in b.models()] == ["bloomz-chat", "gptj-doctor"]
    assert len(b.warnings) == 2 and "bloomz-doctor" in b.warnings[0]
    cpu = default_config(online=True, gpu=False)
    assert cpu.model_names() == ["bloomz-560m", "bloomz-560m-chat", "bloomz-560m-doctor"]
    assert [m.name for m in build_backend(cpu, registry=REG).models()] == ["bloomz-560m"]
    for name in ("paper", "cpu", "tiny"):
        packaged_config(name)


def test_hub_check_is_fast_and_overridable(monkeypatch):
    monkeypatch.setenv("VICHAT_OFFLINE", "1")
    assert hub_reachable() is False
    monkeypatch.setenv("VICHAT_OFFLINE", "0")
    assert hub_reachable() is True
    monkeypatch.delenv("VICHAT_OFFLINE")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_reachable() is False
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with socket.socket() as listener:  # a reachable "hub" on loopback
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listener.getsockname()[1]}")
        assert hub_reachable() is True
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    t0 = time.perf_counter()
    assert hub_reachable(timeout=1.0) is False
    assert time.perf_counter() - t0 < 1.5


def test_composite_routes_by_name_and_rejects_duplicates():
    bloom = tiny_bloom()
    text = f"""
backends:
  - base: bloomz-560m
    base_path: {bloom.base}
    models:
      - {{name: a, adapter: {bloom.adapters['a']}}}
      - {{name: bare}}
  - base: bloomz-560m
    base_path: {bloom.base}
    models:
      - {{name: b, adapter: {bloom.adapters['b']}, template: doctor}}
"""
    b = build_backend(parse_config(text, "<t>"), registry=REG)
    assert isinstance(b, CompositeBackend) and [m.name for m in b.models()] == ["a", "bare", "b"]
    with pytest.raises(ModelError, match=r"unknown model 'c'; available: a, bare, b"):
        b.stream("c", "hi")
    assert b.backend_for("b") is b.backends[1]
    stages = []
    b.prepare(lambda stage, fraction, message: stages.append(stage))
    assert stages.count("ready") == 2 and all(e.loaded for e in b.backends)
    assert "".join(b.stream("b", "Xin chào", decoding=Decoding(max_new_tokens=5, temperature=0)))
    b.close()
    with pytest.raises(ConfigError, match="served by two backends"):
        CompositeBackend([b.backends[0], b.backends[0]])


def test_models_commands_list_and_chat(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from vichat.serve.commands import models

    bloom = tiny_bloom()
    path = tmp_path / "models.yaml"
    path.write_text(f"- base: bloomz-560m\n  path: {bloom.base}\n  models:\n"
                    f"    - {{name: a, adapter: {bloom.adapters['a']}, description: Adapter A}}\n", encoding="utf-8")
    monkeypatch.setenv("VICHAT_MODELS_CONFIG", str(path))
    out = CliRunner().invoke(models, ["list", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["source"] == str(path) and report["models"][0]["name"] == "a"
    assert report["models"][0]["decoding"]["top_k"] == 20
    out = CliRunner().invoke(models, ["chat", "a", "Xin chào", "--temperature", "0", "--max-new-tokens", "6"])
    assert out.exit_code == 0, out.output
    e = LocalEngine(parse_config(path.read_text(), "<t>").backends[0], registry=REG)
    assert out.stdout.strip() == "".join(e.stream("a", "Xin chào", decoding=Decoding(max_new_tokens=6, temperature=0)))
    e.close()
    # A message longer than the context is cut, and the command says so on stderr (not only in a log).
    long = subprocess.run([sys.executable, "-m", "vichat.cli", "models", "chat", "a", "xin chào " * 1500,
                           "--temperature", "0", "--max-new-tokens", "2"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "VICHAT_MODELS_CONFIG": str(path)})
    assert long.returncode == 0, long.stderr
    assert re.search(r"a: the message is too long for the \d+-token context .*only its first \d+ characters were sent",
                     long.stderr)


def test_offline_default_builds_the_tiny_model_and_resolves_its_adapters(monkeypatch):
    """The tiny path end to end, with build_tiny replaced by a finished 'build' (the random BLOOM)."""
    from types import SimpleNamespace

    import vichat.tiny.build as tiny

    bloom = tiny_bloom()
    calls = []

    def fake_build(progress=None, **kwargs):
        calls.append(kwargs)
        for f in (0.0, 0.5, 1.0):
            if progress is not None:
                progress("base", f, "building")
        return SimpleNamespace(base=bloom.base, adapters={"tiny-chat": bloom.adapters["a"],
                                                          "tiny-doctor": bloom.adapters["b"]})

    monkeypatch.setattr(tiny, "build_tiny", fake_build)
    b = build_backend(default_config(online=False), registry=REG)
    seen = []
    b.prepare(lambda stage, fraction, message: seen.append((stage, fraction)))
    # Once for the adapters (the engine passes its registry: the adapters' trainer needs it), once
    # for the base alone, which the plugin's loader finds built.
    assert len(calls) == 2 and calls[0]["registry"] is REG and calls[1] == {"adapters": False}
    assert seen[-1] == ("ready", 1.0)
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and ("base", 0.9) in seen  # one bar, never going back
    engine = b.backends[0]
    assert set(engine.model.peft_config) == {"tiny-chat", "tiny-doctor"}
    greedy = Decoding(max_new_tokens=8, temperature=0)
    outs = {n: "".join(b.stream(n, "Xin chào", decoding=greedy)) for n in ("tiny-chat", "tiny-doctor", "tiny")}
    assert len(set(outs.values())) == 3
    b.close()


def test_a_base_without_weights_is_one_clear_error_not_a_traceback(tmp_path, monkeypatch):
    """`vichat models chat` on a YAML backend whose base cannot be loaded here (no `path:`, no hub)."""
    from click.testing import CliRunner

    from vichat.cli import main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = tmp_path / "models.yaml"
    cfg.write_text("- base: bloomz-560m\n  models:\n    - name: m1\n", encoding="utf-8")
    r = CliRunner().invoke(main, ["models", "chat", "m1", "Xin chào", "--config", str(cfg)])
    assert r.exit_code == 2
    assert "Traceback" not in r.output and "{source}" not in r.output
    assert f"{cfg}:1" in r.output and "`base_path:` in a models YAML" in r.output


def test_without_base_path_the_base_the_adapters_recorded_is_served(tmp_path, monkeypatch):
    """As `vichat eval generate` does: no `base_path:`, and the adapters' adapter_config.json names a
    local base folder -> that folder is loaded (never the spec's hub id, unreachable offline)."""
    import shutil

    from vichat.serve.config import LocalBackendConfig, ModelConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bloom = tiny_bloom()
    models = tuple(ModelConfig(name=n, adapter=str(bloom.adapters[n]), template="chat") for n in ("a", "b"))
    greedy = Decoding(max_new_tokens=6, temperature=0)
    recorded = LocalEngine(LocalBackendConfig(base="bloomz-560m", models=models), registry=REG)
    given = LocalEngine(LocalBackendConfig(base="bloomz-560m", base_path=str(bloom.base), models=models), registry=REG)
    try:
        for name in ("a", "b"):
            assert "".join(recorded.stream(name, "Xin chào", decoding=greedy)) == \
                "".join(given.stream(name, "Xin chào", decoding=greedy))
    finally:
        recorded.close()
        given.close()

    # Two adapters trained on two different folders: one clear error naming both, not a guess.
    other_base = tmp_path / "base-copy"
    shutil.copytree(bloom.base, other_base)
    moved = tmp_path / "adapter-moved"
    shutil.copytree(bloom.adapters["b"], moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(other_base)
    (moved / "adapter_config.json").write_text(json.dumps(config))
    mixed = LocalEngine(LocalBackendConfig(base="bloomz-560m", models=(
        models[0], ModelConfig(name="moved", adapter=str(moved), template="chat"))), registry=REG)
    with pytest.raises(ModelError, match=r"trained on different base folders .*set base_path"):
        mixed.prepare()
