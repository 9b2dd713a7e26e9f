"""`vichat data ...` through click's CliRunner against vichat.cli.main."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from vichat.cli import main


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def tokenizer_dir(tmp_path_factory, shared_data):
    """A small byte-level BPE tokenizer trained on a few hundred Vietnamese lines, saved to a folder."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    lines = []
    with open(shared_data / "vi_instructions" / "vi_alpaca_gpt4vn.jsonl", encoding="utf-8") as fh:
        for _, line in zip(range(300), fh):
            d = json.loads(line)
            lines += [d["prompt"], d["response"]]
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.train_from_iterator(lines, trainer=trainers.BpeTrainer(
        vocab_size=800, special_tokens=["</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    folder = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>").save_pretrained(str(folder))
    return folder


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_data_help_lists_subcommands(runner):
    result = runner.invoke(main, ["data", "--help"])
    assert result.exit_code == 0
    for command in ("list", "show", "stats", "prepare"):
        assert command in result.output


def test_list_json_and_text(runner):
    result = runner.invoke(main, ["data", "list", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    by_name = {d["name"]: d for d in data["datasets"]}
    assert {"alpaca", "vi-alpaca", "gpt4all", "chatdoctor", "vi-sample-chat", "vi-sample-doctor"} <= set(by_name)
    assert by_name["chatdoctor"]["domain"] == "medical" and by_name["alpaca"]["languages"] == ["en", "vi"]
    assert by_name["gpt4all"]["source"] == "nomic-ai/gpt4all_prompt_generations"
    assert all(d["license"] for d in data["datasets"])
    assert {m["name"] for m in data["mixtures"]} >= {"chat", "doctor", "sample-chat", "sample-doctor"}
    text = runner.invoke(main, ["data", "list"])
    assert text.exit_code == 0 and "licence:" in text.stdout and "mixtures:" in text.stdout


def test_show_prints_records_and_counts(runner, shared_data):
    path = shared_data / "en_reference" / "alpaca_data_first2000_en.json"
    result = runner.invoke(main, ["data", "show", "alpaca", "--path", str(path), "-n", "2", "--skip-invalid"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["instruction"] == "Give three tips for staying healthy."
    assert "read 2000, kept 1996, skipped 4 invalid" in result.stderr
    assert "empty 'output' (4)" in result.stderr


def test_show_invalid_record_is_one_line_error_exit_2(runner, shared_data):
    path = shared_data / "en_reference" / "alpaca_data_first2000_en.json"
    result = runner.invoke(main, ["data", "show", "alpaca", "--path", str(path)])
    assert result.exit_code == 2
    assert f"error: {path}:1422 (item 284): empty 'output'" in result.stderr and "--skip-invalid" in result.stderr
    assert "Traceback" not in result.output


def test_show_offline_names_the_flag(runner, monkeypatch, tmp_path):
    monkeypatch.setenv("VICHAT_DATASET_URL_VI_ALPACA", "http://127.0.0.1:9/vi.jsonl")
    result = runner.invoke(main, ["data", "show", "vi-alpaca"])
    assert result.exit_code == 2
    assert "cannot fetch dataset 'vi-alpaca'" in result.stderr and "--path" in result.stderr


def test_stats_json_on_a_real_file(runner, shared_data, tokenizer_dir):
    path = shared_data / "medical" / "chatdoctor_genmedgpt5k_en.json"
    result = runner.invoke(main, ["data", "stats", "chatdoctor", "--path", str(path), "--base-path", str(tokenizer_dir),
                                  "--template", "doctor", "--max-length", "512", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.stdout)
    assert stats["records"] == 5452 and stats["read"] == 5452
    assert stats["template"] == "doctor" and stats["max_length"] == 512
    assert stats["total_tokens"] == pytest.approx(stats["avg_tokens"] * stats["records"], rel=1e-3)
    assert 0 < stats["truncated_share"] < 1 and stats["p95_tokens"] <= stats["max_tokens"]
    # an English set: nearly everything "looks untranslated"
    assert stats["untranslated_share"] > 0.9
    assert stats["non_nfc"] == 0 and stats["skipped"]["count"] == 0


def test_stats_text_on_a_path(runner, tmp_path, tokenizer_dir):
    path = _jsonl(tmp_path / "d.jsonl", [{"instruction": "Xin chào", "output": "Chào bạn"},
                                         {"instruction": "What is the capital of France", "output": "Paris is the capital"}])
    result = runner.invoke(main, ["data", "stats", str(path), "--tokenizer", str(tokenizer_dir)])
    assert result.exit_code == 0, result.output
    assert "--tokenizer is renamed --base-model NAME or --base-path DIR" in result.stderr  # the old flag still works
    assert "Samples" in result.stdout and "Avg. tokens/sample" in result.stdout
    assert "looks untranslated           1 (50.0%)" in result.stdout


def test_prepare_mixture_from_local_sources(runner, tmp_path, shared_data):
    out = tmp_path / "prepared"
    args = ["data", "prepare", "--mixture", "doctor",
            "--source", f"alpaca={shared_data / 'vi_instructions' / 'vi_alpaca_gpt4vn.jsonl'}",
            "--source", f"chatdoctor={shared_data / 'medical' / 'chatdoctor_genmedgpt5k_en.json'}",
            "--limit", "alpaca=300", "--limit", "chatdoctor=200", "--seed", "1", "--val-size", "50",
            "--out", str(out)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "alpaca: vi-alpaca from" in result.stdout and "used 300 (limit 300)" in result.stdout
    assert "train 450, validation 50" in result.stdout
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"]["train"] == 450 and manifest["counts"]["validation"] == 50
    assert manifest["template"] == "doctor"
    first = (out / "train.jsonl").read_text(encoding="utf-8").splitlines()
    again = runner.invoke(main, args[:-1] + [str(tmp_path / "again")])
    assert again.exit_code == 0
    assert (tmp_path / "again" / "train.jsonl").read_text(encoding="utf-8").splitlines() == first


def test_prepare_dataset_list_json_and_errors(runner, tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", [{"prompt": f"Hỏi {i}?", "response": f"Đáp {i}."} for i in range(10)]
               + [{"prompt": "Hỏi 0?", "response": "Đáp 0."}])
    result = runner.invoke(main, ["data", "prepare", "--dataset", str(a), "--out", str(tmp_path / "o"),
                                  "--val-size", "0.2", "--json"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["counts"] == {**manifest["counts"], "records": 10, "train": 8, "validation": 2,
                                  "duplicates_removed": 1}
    bad = runner.invoke(main, ["data", "prepare", "--dataset", str(a), "--out", str(tmp_path / "o"), "--limit", "x=1"])
    assert bad.exit_code == 2 and "--limit x=" in bad.stderr
    none = runner.invoke(main, ["data", "prepare", "--out", str(tmp_path / "o")])
    assert none.exit_code == 2 and "--mixture" in none.stderr


def test_offline_demo_with_the_bundled_sample(runner, tmp_path):
    result = runner.invoke(main, ["data", "prepare", "--mixture", "sample-doctor", "--out", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"]["records"] >= 330 and manifest["counts"]["skipped_invalid"] == 0
    stats = runner.invoke(main, ["data", "stats", "vi-sample-chat", "--json"])  # the default tokenizer
    assert stats.exit_code == 0, stats.output
    assert json.loads(stats.stdout)["records"] >= 220


def test_prepare_writes_every_skipped_record(runner, tmp_path, shared_data):
    path = shared_data / "en_reference" / "alpaca_data_first2000_en.json"
    out = tmp_path / "en"
    result = runner.invoke(main, ["data", "prepare", "--dataset", str(path), "--out", str(out), "--skip-invalid"])
    assert result.exit_code == 0, result.output
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(skipped) == 4 and all(s["problem"] == "empty 'output'" for s in skipped)
    assert skipped[0]["location"] == f"{path}:1422 (item 284)"
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["skipped"]["count"] == 4 and manifest["skipped"]["file"] == "skipped.jsonl"
    train = (out / "train.jsonl").read_text(encoding="utf-8").count("\n")
    validation = (out / "validation.jsonl").read_text(encoding="utf-8").count("\n")
    assert train + validation == 1996


def test_show_wrapper_whose_data_is_not_a_list_says_so(runner, tmp_path):
    path = tmp_path / "weird.json"
    path.write_text(json.dumps({"data": {"x": 1}}), encoding="utf-8")
    result = runner.invoke(main, ["data", "show", str(path)])
    assert result.exit_code == 2, result.output
    assert f"error: {path}: 'data' is a JSON object, not a list of records" in result.stderr
    assert "missing 'instruction'" not in result.output and "Traceback" not in result.output
    # A single record that is a plain object is still read as one record.
    (tmp_path / "one.json").write_text(json.dumps({"instruction": "Chào", "output": "Xin chào"}), encoding="utf-8")
    assert runner.invoke(main, ["data", "show", str(tmp_path / "one.json")]).exit_code == 0


def test_prepare_summary_prints_the_first_three_screened_records():
    from vichat.data.prepare import summarise

    first = [f"vi: id vi-{i}: code broken by translation: py-for at output line 1" for i in range(3)]
    manifest = {"mixture": "m", "template": "chat", "seed": 42, "sources": [],
                "screen": {"corrupted_code": {"dropped": 3, "kept": 0, "first": first}},
                "counts": {"records": 1, "train": 1, "validation": 0}, "files": {}}
    line = next(l for l in summarise(manifest).splitlines() if l.startswith("  first corrupted code: "))
    assert line == "  first corrupted code: " + " | ".join(first)
