"""The tiny offline model: tokenizer + base built from scratch, adapters, cache, resume, plugin.

Every build here uses :data:`SMALL` (a 1-layer, 32-wide model and a few dozen steps), not the
default settings: the point is the machinery (determinism, cache, atomic stages, resume), which is
the same at any size. docs/tiny.md has the numbers of the default build.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from vichat.cli import main
from vichat.records import VichatError
from vichat.train import tiny
from vichat.train.pretrain import Document, read_documents, split_documents
from vichat.train.tiny import TinyConfig, build_tiny

SMALL = TinyConfig(vocab_size=800, n_layer=1, hidden_size=32, n_head=2, seq_len=64, batch_size=8, steps=40,
                   dropout=0.1, learning_rate=1e-2, warmup_steps=5, checkpoint_every=10, log_every=5,
                   # adapters: one short epoch is enough to check the stage
                   adapter_overrides=(("epochs", 1), ("max_length", 128), ("total_batch_size", 16),
                                      ("eval_steps", 1000), ("save_steps", 1000)))


def _build(**kw):
    kw.setdefault("config", SMALL)
    kw.setdefault("adapters", False)
    kw.setdefault("threads", 1)  # a 32-wide model gains nothing from a second thread, and CI shares cores
    return build_tiny(echo=None, show_progress=False, **kw)


def _weights(base: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(base / "model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One small base build in the (per-session) cache, shared by the tests that only read it."""
    # Module-scoped fixtures run before conftest's autouse cache isolation: point at the same folder.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VICHAT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "vichat-cache"))
        start = time.perf_counter()
        build = _build()
        yield build, time.perf_counter() - start


# --------------------------------------------------------------------------- base stage


def test_build_writes_tokenizer_base_and_report(built):
    build, _ = built
    root = build.paths.root
    assert root.parent == tiny.cache_root() and root.name == tiny.build_key(None, 0, SMALL)
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "pretrain.json"):
        assert (build.base / name).is_file(), name
    assert (root / "tokenizer" / "tokenizer.json").is_file()
    report = json.loads((root / "report.json").read_text(encoding="utf-8"))
    assert report == dict(build.report)
    assert report["config"]["hidden_size"] == 32 and report["seed"] == 0
    assert report["base"]["training"]["steps"] == SMALL.steps
    assert report["corpus"]["inputs"] == ["sample"] and report["corpus"]["heldout_texts"] > 0
    config = json.loads((build.base / "config.json").read_text())
    assert config["model_type"] == "bloom" and config["n_layer"] == 1
    assert config["vocab_size"] == report["tokenizer"]["vocab_size"] <= SMALL.vocab_size
    assert not list(root.glob(".tmp-*")) and not (root / ".work").exists()


def test_model_beats_unigram_on_heldout(built):
    ppl = built[0].report["perplexity"]
    assert ppl["heldout_tokens"] > 1000
    assert ppl["model_perplexity"] < 0.8 * ppl["unigram_perplexity"], ppl
    assert ppl["model_bits_per_char"] < ppl["unigram_bits_per_char"]
    assert ppl["ratio"] == pytest.approx(ppl["model_perplexity"] / ppl["unigram_perplexity"], rel=1e-3)


def test_second_call_is_a_cache_hit(built, monkeypatch):
    build, first_seconds = built
    mtime = (build.base / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr("vichat.train.tiny._build", lambda *a, **k: pytest.fail("a cache hit must not rebuild"))
    events = []
    start = time.perf_counter()
    again = _build(progress=lambda *e: events.append(e))
    seconds = time.perf_counter() - start
    assert again.cached and again.paths == build.paths and dict(again.report) == dict(build.report)
    assert seconds < 1.0, f"cache hit took {seconds:.2f} s (build took {first_seconds:.1f} s)"
    assert (build.base / "model.safetensors").stat().st_mtime_ns == mtime
    assert events == [("done", 1.0, f"tiny model ready (cached) at {build.paths.root}")]


def test_same_seed_same_weights_other_seed_differs(tmp_path, built):
    cfg = replace(SMALL, steps=12)
    a = _build(config=cfg, out=tmp_path / "a")
    b = _build(config=cfg, out=tmp_path / "b")
    c = _build(config=cfg, out=tmp_path / "c", seed=1)
    assert _same(_weights(a.base), _weights(b.base))
    assert not _same(_weights(a.base), _weights(c.base))
    assert (a.paths.root / "tokenizer" / "tokenizer.json").read_bytes() == \
        (b.paths.root / "tokenizer" / "tokenizer.json").read_bytes()


def test_key_follows_config_seed_and_corpus(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"text": "Xin chào Việt Nam."}, ensure_ascii=False) + "\n", encoding="utf-8")
    keys = {tiny.build_key(None, 0, SMALL), tiny.build_key(None, 1, SMALL),
            tiny.build_key(None, 0, replace(SMALL, steps=41)), tiny.build_key([str(corpus)], 0, SMALL)}
    assert len(keys) == 4
    assert tiny.build_key(None, 0, SMALL) == tiny.build_key(["sample"], 0, SMALL)
    before = tiny.build_key([str(corpus)], 0, SMALL)
    corpus.write_text(json.dumps({"text": "Xin chào!"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert tiny.build_key([str(corpus)], 0, SMALL) != before  # contents, not names


def test_interrupted_build_leaves_no_half_stage_and_resumes_exactly(tmp_path):
    cfg = replace(SMALL, steps=20, checkpoint_every=8)
    reference = _build(config=cfg, out=tmp_path / "ref")

    out = tmp_path / "run"
    calls = {"base": 0}

    def interrupt(stage: str, fraction: float, message: str) -> None:
        if stage == "base" and "step" in message:
            calls["base"] += 1
            if calls["base"] == 13:  # a Ctrl-C after step 13 (the last periodic checkpoint was step 8)
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _build(config=cfg, out=out, progress=interrupt)
    assert (out / "tokenizer" / "tokenizer.json").is_file()  # the finished stage stays
    assert not (out / "base").exists() and not (out / "report.json").exists()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp-")]
    assert tiny.read_report(tiny.TinyPaths(out)) is None

    resumed = _build(config=cfg, out=out)
    assert resumed.report["base"]["training"]["resumed_from_step"] == 13
    assert resumed.report["base"]["training"]["steps"] == 20
    assert _same(_weights(resumed.base), _weights(reference.base))
    assert not (out / ".work").exists()


def test_ctrl_c_is_deferred_to_the_step_boundary(tmp_path):
    cfg = replace(SMALL, steps=12, checkpoint_every=100)
    reference = _build(config=cfg, out=tmp_path / "ref")
    sent = []

    def ctrl_c(stage: str, fraction: float, message: str) -> None:
        if stage == "base" and "step 7/" in message and not sent:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, arriving while the loop runs

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        _build(config=cfg, out=tmp_path / "run", progress=ctrl_c)
    assert signal.getsignal(signal.SIGINT) is before  # the build's handler is gone again
    resumed = _build(config=cfg, out=tmp_path / "run")
    assert resumed.report["base"]["training"]["resumed_from_step"] == 7
    assert _same(_weights(resumed.base), _weights(reference.base))


def test_minutes_fix_the_step_count_after_calibration(tmp_path):
    build = _build(config=replace(SMALL, minutes=0.01), out=tmp_path / "m")
    steps = build.report["base"]["training"]["steps"]
    assert steps > 10  # CALIBRATION_STEPS, then what fits in 0.6 s
    assert build.report["config"]["steps"] is None and build.report["config"]["minutes"] == 0.01
    assert tiny.build_key(None, 0, replace(SMALL, minutes=0.01)) == tiny.build_key(None, 0, replace(SMALL, steps=7, minutes=0.01))


def test_stage_rename_is_atomic_on_failure(tmp_path):
    final = tmp_path / "stage"
    with pytest.raises(RuntimeError):
        with tiny._stage(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- plugin and CLI


def test_plugin_tiny_resolves_and_loads(built):
    import torch

    from vichat.plugins import get_registry

    spec = get_registry().base_model("tiny")
    assert spec.lora_targets == ("query_key_value",) and spec.default_template == "chat"
    assert spec.architecture.family == "bloom"
    assert (spec.architecture.n_layers, spec.architecture.hidden_size) == (tiny.DEFAULT_CONFIG.n_layer,
                                                                           tiny.DEFAULT_CONFIG.hidden_size)
    build, _ = built
    for path in (build.base, build.paths.root):  # the base folder, or the build folder holding it
        model, tok = spec.load_model(str(path))
        assert model.config.model_type == "bloom" and tok.pad_token == "<pad>"
    ids = tok("Xin chào", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]


def test_plugin_load_without_path_uses_the_default_build(built, monkeypatch):
    from vichat.plugins import get_registry

    monkeypatch.setattr(tiny, "DEFAULT_CONFIG", SMALL)  # the default build, at test size
    model, _ = get_registry().base_model("tiny").load_model()
    assert model.config.hidden_size == SMALL.hidden_size


def test_plugin_import_is_light():
    code = "import sys, vichat_plugins.tiny; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_build_and_info(built, tmp_path, monkeypatch):
    monkeypatch.setattr(tiny, "DEFAULT_CONFIG", SMALL)
    runner = CliRunner()
    res = runner.invoke(main, ["tiny", "build", "--no-adapters"])
    assert res.exit_code == 0, res.output
    assert "cached" in res.output and "perplexity held-out" in res.output
    res = runner.invoke(main, ["tiny", "info"])
    assert res.exit_code == 0, res.output
    assert str(tiny.cache_root()) in res.output and "[complete" in res.output
    res = runner.invoke(main, ["tiny", "info", "--json"])
    data = json.loads(res.output)
    assert data["default"]["path"] == str(built[0].paths.root) and data["default"]["built"] is True
    res = runner.invoke(main, ["tiny", "build", "--steps", "3", "--minutes", "1"])
    assert res.exit_code == 2 and "not both" in res.output
    res = runner.invoke(main, ["tiny", "build", "--corpus", str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 2 and "missing.jsonl" in res.output


# --------------------------------------------------------------------------- corpus


def test_corpus_rows_texts_and_templates(tmp_path):
    f = tmp_path / "mix.jsonl"
    rows = [{"text": "Hà Nội là thủ đô."}, {"prompt": "Chào bạn?", "response": "Chào!"}, {"title": "nothing"}]
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n{bad json\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("Đoạn một.\n\nĐoạn hai.", encoding="utf-8")
    docs, skipped, n = read_documents([str(tmp_path)])
    texts = [d.text for d in docs]
    assert "Hà Nội là thủ đô." in texts and "Đoạn một." in texts and "Đoạn hai." in texts
    assert "Chào bạn?\n\nChào!" in texts
    assert any(t.startswith("Hãy viết") and "### Instruction:\nChào bạn?\n### Response:\nChào!" in t for t in texts)
    assert n == 2 and any("mix.jsonl:3" in s for s in skipped) and any("mix.jsonl:4" in s for s in skipped)


def test_sample_medical_records_use_the_doctor_template():
    docs, _, n = read_documents(["sample"])
    assert n == 0
    assert any(d.group.startswith("sample/medical.jsonl#") and d.text.startswith("Nếu bạn là bác sĩ") for d in docs)
    assert any(d.group.startswith("sample/general.jsonl#") and d.text.startswith("Hãy viết") for d in docs)


def test_split_keeps_groups_together_and_is_stable():
    docs = [Document(f"g{i // 2}", f"text {i}") for i in range(400)]
    train, held = split_documents(docs, 0.05, 10**9, 10**9)
    assert 0 < len(held) < 40 and len(train) + len(held) == 400
    held_groups = {int(t.split()[1]) // 2 for t in held}
    assert all(f"text {2 * g}" in held and f"text {2 * g + 1}" in held for g in held_groups)
    again = split_documents(list(reversed(docs)), 0.05, 10**9, 10**9)[1]
    assert sorted(again) == sorted(held)
    with pytest.raises(VichatError, match="two documents"):
        split_documents([Document("only", "x")], 0.05, 10, 10)


def test_shared_corpus_reads(shared_data):
    docs, _, n = read_documents([str(shared_data / "corpus" / "viwiki_sample.jsonl")])
    assert len(docs) == 282 and n == 0


# --------------------------------------------------------------------------- adapters


def test_adapters_are_trained_with_the_trainer(built):
    try:
        import vichat.train.trainer  # noqa: F401
    except ModuleNotFoundError as exc:  # only a missing trainer module skips; a broken one fails
        if exc.name != "vichat.train.trainer":
            raise
        pytest.skip("the LoRA trainer (vichat.train.trainer) is not part of this checkout yet")
    events = []
    build = build_tiny(config=SMALL, echo=None, show_progress=False, progress=lambda *e: events.append(e))
    assert not build.cached
    assert set(build.adapters) == {"tiny-chat", "tiny-doctor"}
    for name, path in build.adapters.items():
        assert (path / "adapter_config.json").is_file() and (path / "adapter_model.safetensors").is_file()
        assert not (path / "checkpoints").exists()
        assert build.report["adapters"][name]["result"]["global_step"] >= 1
    fractions = [f for _, f, _ in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert {s for s, _, _ in events} >= {"adapter:tiny-chat", "adapter:tiny-doctor", "done"}
    assert not any(s == "base" and "step" in m for s, _, m in events)  # the base was reused, not retrained

    from peft import PeftModel

    from vichat.plugins import get_registry

    model, _ = get_registry().base_model("tiny").load_model(str(build.base))
    peft_model = PeftModel.from_pretrained(model, str(build.adapters["tiny-doctor"]))
    assert peft_model.peft_config["default"].target_modules == {"query_key_value"}
    assert build_tiny(config=SMALL, echo=None).cached


def test_load_tokenizer_by_name_uses_the_tiny_build(built, monkeypatch):
    """`--tokenizer tiny` (data stats, training) gets the build's tokenizer, never the hub."""
    from transformers import AutoTokenizer

    from vichat.data.tokenizers import load_tokenizer

    monkeypatch.setattr(tiny, "DEFAULT_CONFIG", SMALL)  # the default build, at test size
    build, _ = built
    tok = load_tokenizer("tiny")
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(build.base).get_vocab()
