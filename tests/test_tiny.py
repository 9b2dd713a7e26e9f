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

import unicodedata

import pytest
from click.testing import CliRunner

from vichat.cli import main
from vichat.data.templates import CHAT
from vichat.records import VichatError
from vichat.plugins import get_registry
from vichat.tiny import build as tiny
from vichat.tiny.pretrain import Document, read_documents, split_documents
from vichat.tiny.build import TinyConfig, build_tiny
from vichat.tiny.config import _stage
from vichat.models import load_base

SMALL = TinyConfig(vocab_size=800, n_layer=1, hidden_size=32, n_head=2, seq_len=64, batch_size=8, steps=40,
                   dropout=0.1, learning_rate=1e-2, warmup_steps=5, checkpoint_every=10, log_every=5,
                   # adapters: one short epoch is enough to check the stage
                   adapter_overrides=(("epochs", 1), ("max_length", 128), ("total_batch_size", 16),
                                      ("eval_steps", 1000), ("save_steps", 1000)))


def _build(**kw):
    kw.setdefault("config", SMALL)
    kw.setdefault("adapters", False)
    kw.setdefault("threads", 1)  # a 32-wide model gains nothing from a second thread, and CI shares cores
    return build_tiny(echo=None, show_progress=False, **{"registry": get_registry(), **kw})


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
    monkeypatch.setattr("vichat.tiny.build._build", lambda *a, **k: pytest.fail("a cache hit must not rebuild"))
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
        with _stage(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- plugin and CLI


def test_plugin_tiny_resolves_and_loads(built):
    import torch

    spec = get_registry().base_model("tiny")
    assert spec.lora_targets == ("query_key_value",) and spec.default_template == "chat"
    assert spec.architecture.family == "bloom"
    assert (spec.architecture.n_layers, spec.architecture.hidden_size) == (tiny.DEFAULT_CONFIG.n_layer,
                                                                           tiny.DEFAULT_CONFIG.hidden_size)
    build, _ = built
    for path in (build.base, build.paths.root):  # the base folder, or the build folder holding it
        model, tok = load_base(spec, str(path))
        assert model.config.model_type == "bloom" and tok.pad_token == "<pad>"
    ids = tok("Xin chào", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]


def test_plugin_load_without_path_uses_the_default_build(built, monkeypatch):
    monkeypatch.setattr(tiny, "DEFAULT_CONFIG", SMALL)  # the default build, at test size
    model, _ = load_base(get_registry().base_model("tiny"))
    assert model.config.hidden_size == SMALL.hidden_size


def test_plugin_load_by_its_own_names_uses_the_default_build(built, monkeypatch, tmp_path):
    """"vichat/tiny" (the hub id older adapters recorded, on no hub) and "tiny" mean the default build,
    even where a folder of that name holds no model (vichat's source folder, from a checkout's root)."""
    monkeypatch.setattr(tiny, "DEFAULT_CONFIG", SMALL)  # the default build, at test size
    (tmp_path / "vichat" / "tiny").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    spec = get_registry().base_model("tiny")
    for name in ("vichat/tiny", "tiny"):
        model, _ = load_base(spec, name)
        assert model.config.hidden_size == SMALL.hidden_size
        assert Path(model.name_or_path).resolve() == built[0].base.resolve()


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


def test_corpus_rows_are_plain_text(tmp_path):
    f = tmp_path / "mix.jsonl"
    rows = [{"text": "Hà Nội là thủ đô."}, {"prompt": "Chào bạn?", "response": "Chào!"}, {"title": "nothing"}]
    f.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n{bad json\n", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("Đoạn một.\n\nĐoạn hai.", encoding="utf-8")
    docs, skipped, n = read_documents([str(tmp_path)])
    texts = sorted(d.text for d in docs)
    # An instruction row is one plain document: the base never sees a prompt template.
    assert texts == sorted(["Hà Nội là thủ đô.", "Chào bạn?\n\nChào!", "Đoạn một.", "Đoạn hai."])
    assert n == 2 and any("mix.jsonl:3" in s for s in skipped) and any("mix.jsonl:4" in s for s in skipped)


def test_sample_corpus_is_the_bundled_prose_only():
    docs, _, n = read_documents(["sample"])
    assert n == 0 and len(docs) >= 300
    assert {d.group.split("#")[0] for d in docs} == {"sample/prose.jsonl"}
    assert not any("###" in d.text or d.text.startswith(("Hãy viết", "Nếu bạn là bác sĩ")) for d in docs)
    assert all(unicodedata.is_normalized("NFC", d.text) for d in docs)


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
    import torch

    try:
        import vichat.train.trainer  # noqa: F401
    except ModuleNotFoundError as exc:  # only a missing trainer module skips; a broken one fails
        if exc.name != "vichat.train.trainer":
            raise
        pytest.skip("the LoRA trainer (vichat.train.trainer) is not part of this checkout yet")
    events = []
    build = build_tiny(config=SMALL, echo=None, show_progress=False, progress=lambda *e: events.append(e),
                       registry=get_registry())
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

    model, tok = load_base(get_registry().base_model("tiny"), str(build.base))
    peft_model = PeftModel.from_pretrained(model, str(build.adapters["tiny-doctor"]))
    assert peft_model.peft_config["default"].target_modules == {"query_key_value"}
    assert build_tiny(config=SMALL, echo=None).cached

    # The held-out evaluation ran as the last stage; its figures are measured, not written down:
    # the base's loss is recomputed here through transformers' own loss on the same records.
    ev = build.report["heldout_eval"]
    assert ev == json.loads((build.paths.root / "eval.json").read_text(encoding="utf-8"))
    _check_eval_fields(ev)
    from vichat.data.tokenize import tokenize_record
    from vichat.tiny.parts import heldout_pairs

    total = n = 0.0
    model, tok = load_base(get_registry().base_model("tiny"), str(build.base))
    with torch.no_grad():
        for p in heldout_pairs("tiny-doctor"):
            ex = tokenize_record({"instruction": p.instruction, "input": p.input, "output": p.output}, tok, "doctor",
                                 max_length=100_000)
            k = sum(1 for x in ex["labels"][1:] if x != -100)
            total += float(model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]])).loss) * k
            n += k
    assert ev["loss"]["tiny-doctor"]["response_tokens"] == n
    assert ev["loss"]["tiny-doctor"]["base"] == pytest.approx(total / n, abs=2e-4)
    assert ev["loss"]["tiny-doctor"]["adapter"] != ev["loss"]["tiny-doctor"]["base"]  # the adapter does something

    # `vichat tiny eval` reads the build's eval.json, and --force measures again (same figures).
    runner = CliRunner()
    res = runner.invoke(main, ["tiny", "eval", "--build", str(build.paths.root)])
    assert res.exit_code == 0, res.output
    assert "held-out response loss" in res.output and "tiny-chat and tiny-doctor answer differently" in res.output
    assert f"{ev['loss']['tiny-chat']['base']:.3f}" in res.output and "goals:" in res.output
    res = runner.invoke(main, ["tiny", "eval", "--build", str(build.paths.root), "--force", "--json"])
    assert res.exit_code == 0, res.output
    again = json.loads(res.stdout)
    assert again["loss"] == ev["loss"] and again["generation"] == ev["generation"]
    assert tiny.read_report(build.paths)["heldout_eval"]["loss"] == ev["loss"]


def _check_eval_fields(ev: dict) -> None:
    from vichat.tiny.parts import heldout_pairs

    n_questions = len(heldout_pairs("tiny-chat")) + len(heldout_pairs("tiny-doctor"))
    assert set(ev["loss"]) == {"tiny-chat", "tiny-doctor"}
    for name, v in ev["loss"].items():
        assert v["records"] == len(heldout_pairs(name)) and v["response_tokens"] > 10 * v["records"]
        assert v["reduction"] == pytest.approx(1 - v["adapter"] / v["base"], abs=2e-4)
    assert set(ev["generation"]) == {"tiny", "tiny-chat", "tiny-doctor"}
    assert ev["decoding"]["temperature"] == 0.0 and ev["decoding"]["max_new_tokens"] == 256
    assert ev["decoding"]["repetition_penalty"] == 1.8  # the app's decoding for `tiny` (plugins/tiny.py), made greedy
    for name, g in ev["generation"].items():
        assert g["questions"] == n_questions
        assert 0.0 <= g["eos_share"] <= 1.0 and 0.0 <= g["marker_share"] <= 1.0
        assert 0 < g["mean_new_tokens"] <= 256
    assert ev["chat_vs_doctor"]["questions"] == n_questions and 0.0 <= ev["chat_vs_doctor"]["differ_share"] <= 1.0
    assert len(ev["goals"]) == 5
    for goal in ev["goals"].values():
        assert goal["met"] == (goal["value"] >= goal["target"])
    assert ev["examples"] and all(set(e) >= {"question", "tiny", "tiny-chat", "tiny-doctor"} for e in ev["examples"])


def test_load_tokenizer_by_name_uses_the_tiny_build(built, monkeypatch):
    """`--tokenizer tiny` (data stats, training) gets the build's tokenizer, never the hub."""
    from transformers import AutoTokenizer

    from vichat.data.tokenizers import load_tokenizer

    monkeypatch.setattr(tiny, "DEFAULT_CONFIG", SMALL)  # the default build, at test size
    build, _ = built
    tok = load_tokenizer("tiny", registry=get_registry())
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(build.base).get_vocab()


# --------------------------------------------------------------------------- disjoint data


def _pair_texts(pairs) -> set[str]:
    """Each record's question (instruction and input, as the app would receive it) and its answer.
    A bare instruction may repeat with another input ("Dịch câu sau sang tiếng Anh."); a question may not."""
    from vichat.tiny.parts import normalize

    return {normalize(t) for p in pairs for t in (p.message, p.output)}


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    """Every part of the tiny build's data, as the build reads it: the pretraining text (after the
    build's own split), each adapter's training and validation records (prepared the way the build
    prepares them) and the held-out pairs."""
    from vichat.data.prepare import TRAIN_FILE, VALIDATION_FILE
    from vichat.tiny.pretrain import load_corpus
    from vichat.tiny.parts import ADAPTER_DATA, Pair, heldout_pairs, protected_texts
    from vichat.tiny.stages import prepare_adapter_data

    corpus = load_corpus(["sample"], tiny.DEFAULT_CONFIG, protected_texts())
    out = {"pretrain": corpus.train + corpus.heldout, "removed": corpus.n_removed}
    root = tmp_path_factory.mktemp("tiny-data")
    for name in ADAPTER_DATA:
        prepare_adapter_data(root / name, name, seed=0, registry=get_registry())
        for part, file in (("train", TRAIN_FILE), ("val", VALIDATION_FILE)):
            rows = [json.loads(line) for line in (root / name / file).read_text(encoding="utf-8").splitlines()]
            out[f"{name}:{part}"] = [Pair(r["id"], r["instruction"], r.get("input", ""), r["output"], file) for r in rows]
        out[f"{name}:heldout"] = heldout_pairs(name)
    return out


def test_bundled_data_parts_share_no_text(splits):
    from vichat.tiny.parts import normalize

    assert splits["removed"] == 0  # the bundled prose needs no cleaning: it was written apart
    parts = {k: v for k, v in splits.items() if ":" in k}
    for name, pairs in parts.items():
        assert pairs, name
        assert len(_pair_texts(pairs)) == 2 * len(pairs), f"{name}: a repeated question or answer"
    assert len(parts["tiny-chat:val"]) >= 20 and len(parts["tiny-doctor:val"]) >= 12
    assert len(parts["tiny-chat:heldout"]) >= 35 and len(parts["tiny-doctor:heldout"]) >= 35
    names = sorted(parts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            shared = _pair_texts(parts[a]) & _pair_texts(parts[b])
            assert not shared, f"{a} and {b} share {sorted(shared)[:3]}"
    prose = {normalize(t) for t in splits["pretrain"]}
    for name, pairs in parts.items():
        assert not (_pair_texts(pairs) & prose), name


def test_no_adapter_or_heldout_response_inside_the_pretraining_text(splits):
    from vichat.tiny.parts import normalize

    corpus = "\x00".join(normalize(t) for t in splits["pretrain"])
    assert len(corpus) > 100_000
    for name, pairs in splits.items():
        if ":" not in name:
            continue
        for p in pairs:
            for text in (p.output, p.instruction):
                n = normalize(text)
                # Every response, and every question long enough to be specific, is absent.
                if len(n) >= 24:
                    assert n not in corpus, f"{name} {p.id}: {text[:60]!r} is in the pretraining text"


def test_decontaminate_drops_documents_holding_protected_text(tmp_path):
    from vichat.tiny.pretrain import decontaminate, load_corpus
    from vichat.tiny.parts import heldout_pairs, protected_texts

    answer = heldout_pairs("tiny-doctor")[0].output
    docs = [Document("a", "Một đoạn văn bình thường về thời tiết hôm nay.", "f:1"),
            # The held-out answer inside a longer document, with other spacing and case.
            Document("b", "Mở đầu. " + " ".join(answer.upper().split()) + " Kết thúc.", "f:2"),
            Document("c", "Một đoạn khác.", "f:3")]
    kept, removed, n = decontaminate(docs, protected_texts())
    assert [d.group for d in kept] == ["a", "c"] and n == 1
    assert removed[0].startswith("f:2: contains protected text")
    # Through a --corpus of one's own: the leaking row is dropped and counted in the report.
    f = tmp_path / "corpus.jsonl"
    f.write_text("\n".join(json.dumps({"text": d.text}, ensure_ascii=False) for d in docs * 3) + "\n", encoding="utf-8")
    corpus = load_corpus([str(f)], SMALL, protected_texts())
    assert corpus.n_removed == 3 and corpus.summary()["decontaminated_documents"] == 3
    assert not any("KẾT THÚC" in t.upper() for t in corpus.train + corpus.heldout)


# --------------------------------------------------------------------------- held-out evaluation


def test_batched_greedy_answers_match_one_at_a_time(built):
    from vichat.specs import Decoding
    from vichat.tiny.heldout import generate_answers

    model, tok = load_base(get_registry().base_model("tiny"), str(built[0].base))
    questions = ["Xin chào", "Hà Nội có những món ăn nổi tiếng nào, và nên ăn ở đâu?", "Tôi bị ho."]
    greedy = Decoding(max_new_tokens=12, temperature=0.0)
    together = generate_answers(model, tok, questions, CHAT, greedy, batch_size=3)
    alone = [generate_answers(model, tok, [q], CHAT, greedy)[0] for q in questions]
    assert [a["ids"] for a in together] == [a["ids"] for a in alone]
    for a in together:
        assert len(a["ids"]) + a["eos"] <= 12
        if not a["leak"]:
            assert a["text"] == a["raw"].strip()
