"""`vichat eval generate` and the local judge, with a tiny random BLOOM built here (CPU, seconds)."""

import json

import pytest
from click.testing import CliRunner

from vichat.cli import main
from vichat.evaluate.generate import cut_at_stop, existing_answers

QUESTIONS = [
    {"question_id": 1, "text": "Làm thế nào tôi có thể cải thiện kỹ năng quản lý thời gian?", "category": "generic"},
    {"question_id": 2, "text": "Viết hàm Python đảo ngược một chuỗi.", "category": "coding"},
    {"question_id": 3, "text": "Giải phương trình 3x + 10 = 5(x - 2).", "category": "math"},
]


@pytest.fixture(scope="session")
def tiny_bloom(tmp_path_factory):
    """A 2-layer, hidden-64 BLOOM with a BPE tokenizer trained on a few Vietnamese lines."""
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    from vichat.data.tokenizers import train_bpe_tokenizer

    corpus = [q["text"] for q in QUESTIONS] * 3 + [
        "Hãy viết một phản hồi thích hợp cho chỉ dẫn dưới đây.", "### Instruction:", "### Response:",
        "Nếu bạn là bác sĩ, vui lòng trả lời các câu hỏi y tế dựa trên mô tả của bệnh nhân.",
        "Xin chào, tôi là trợ lý. Bạn nên ngủ đủ giấc và uống nhiều nước.",
    ]
    tok = train_bpe_tokenizer(corpus, vocab_size=400, style="bloom")
    torch.manual_seed(0)
    cfg = BloomConfig(vocab_size=len(tok), hidden_size=64, n_layer=2, n_head=4,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-bloom")
    BloomForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture
def questions(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in QUESTIONS), encoding="utf-8")
    return path


def run(*args):
    return CliRunner().invoke(main, ["eval", "generate", *map(str, args)])


def test_generates_fastchat_answers_and_resumes(tiny_bloom, questions, tmp_path):
    out = tmp_path / "answers.jsonl"
    r = run("--model", tiny_bloom, "--questions", questions, "--out", out, "--max-new-tokens", 6, "--limit", 2, "--batch-size", 2)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [a["question_id"] for a in rows] == [1, 2]
    a = rows[0]
    assert set(a) == {"question_id", "text", "answer_id", "model_id", "metadata"}
    assert a["model_id"] == tiny_bloom.name and len(a["answer_id"]) == 22
    m = a["metadata"]
    assert (m["max_new_tokens"], m["temperature"], m["top_k"], m["repetition_penalty"]) == (6, 0.5, 20, 1.2)
    assert m["template"] == "chat" and m["stop"] == ["### Instruction:"] and m["seed"] == 0
    # A torn last line (a kill mid-write) is dropped and that question answered again.
    with open(out, "a", encoding="utf-8") as f:
        f.write('{"question_id": 3, "text": "cut sh')
    r = run("--model", tiny_bloom, "--questions", questions, "--out", out, "--max-new-tokens", 6)
    assert r.exit_code == 0, r.output
    assert "1 answers written" in r.output and "(2 were already there)" in r.output
    assert list(existing_answers(out)) == [1, 2, 3]
    # Other decoding settings into the same file would mix two runs: refused.
    r = run("--model", tiny_bloom, "--questions", questions, "--out", out, "--max-new-tokens", 7)
    assert r.exit_code == 2 and "other settings" in r.output


def test_adapter_dir_and_doctor_template_for_icliniq(tiny_bloom, tmp_path, shared_data, monkeypatch):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_bloom)
    adapter = tmp_path / "bloomz-doctor-tiny"
    get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["query_key_value"])).save_pretrained(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(tiny_bloom)
    monkeypatch.setenv("VICHAT_SHARED_DATA", str(shared_data))
    out = tmp_path / "doctor.jsonl"
    r = run("--model", adapter, "--set", "icliniq100-vi", "--out", out, "--max-new-tokens", 4, "--limit", 1, "--temperature", 0)
    assert r.exit_code == 0, r.output
    (a,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert a["question_id"] == 0 and a["model_id"] == "bloomz-doctor-tiny"
    assert a["metadata"]["template"] == "doctor" and a["metadata"]["adapter"] == str(adapter)
    assert a["metadata"]["temperature"] == 0


def test_unknown_model_and_stop_markers(tmp_path, questions):
    r = run("--model", "no-such-model", "--questions", questions, "--out", tmp_path / "x.jsonl")
    assert r.exit_code == 2 and "not an adapter or model folder, nor a registered base model" in r.output
    r = run("--model", "bloomz-chat", "--questions", questions, "--out", tmp_path / "x.jsonl")
    assert r.exit_code == 2 and "has no trained adapter at runs/bloomz-chat" in r.output
    assert cut_at_stop(" Chào bạn.\n### Instruction:\nthêm", ["### Instruction:"]) == "Chào bạn."
    assert cut_at_stop("no marker ", ["### Instruction:"]) == "no marker"


def test_local_judge_runs_in_process(tiny_bloom, questions, tmp_path, monkeypatch):
    # A random model cannot judge: its text is unreadable, re-asked once, and recorded failed.
    answers = tmp_path / "a.jsonl"
    answers.write_text("".join(json.dumps({"question_id": q["question_id"], "text": f"đáp án {q['question_id']}"}) + "\n"
                               for q in QUESTIONS), encoding="utf-8")
    out = tmp_path / "reviews.jsonl"
    r = CliRunner().invoke(main, ["eval", "judge", "--questions", str(questions), "--answers", str(answers), "--baseline",
                                  str(answers), "--out", str(out), "--judge", "local", "--judge-model", "bloomz-560m",
                                  "--option", f"base_path={tiny_bloom}", "--max-tokens", "4", "--protocol", "paper",
                                  "--limit", "1", "--cache", str(tmp_path / "c.sqlite")])
    assert r.exit_code == 4, r.output  # written, but no judgment has scores: not a success
    assert "1 of 1 reviews have no scores (1 unreadable, 0 not judged)" in r.output
    (row,) = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert row["judge"] == "local" and row["judge_model"] == "bloomz-560m"
    assert row["usage"]["requests"] == 2 and row["reasked"]
    assert row["score"] is None and "unreadable after one re-ask" in row["error"]
    assert "cost $0.0000" in r.output


def test_answers_are_clean_nfc_text_from_nfc_prompts(tiny_bloom, tmp_path, monkeypatch):
    """Prompts are NFC-encoded as in training and serving; answers never carry U+FFFD or control
    characters (what a byte-level tokenizer decodes from a cut-off multi-byte letter)."""
    import unicodedata

    from transformers import PreTrainedTokenizerBase

    from vichat.records import clean_generated

    assert clean_generated("A\ufffd\x07b\r\nc\td\x1b[31m") == "Ab\nc\td[31m"
    assert clean_generated("Vie\u0323\u0302t") == "Việt"

    decomposed = unicodedata.normalize("NFD", QUESTIONS[0]["text"])
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"question_id": 1, "text": decomposed, "category": "generic"}, ensure_ascii=False) + "\n",
                    encoding="utf-8")
    seen_prompts, real_call, real_decode = [], PreTrainedTokenizerBase.__call__, PreTrainedTokenizerBase.decode

    def call(self, text=None, *args, **kwargs):
        seen_prompts.extend(text if isinstance(text, list) else [text])
        return real_call(self, text, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", call)
    monkeypatch.setattr(PreTrainedTokenizerBase, "decode",
                        lambda self, *a, **k: "\ufffdXin\x00 chào\x1b\ufffd " + real_decode(self, *a, **k))
    out = tmp_path / "answers.jsonl"
    r = run("--model", tiny_bloom, "--questions", path, "--out", out, "--max-new-tokens", 4)
    assert r.exit_code == 0, r.output
    assert seen_prompts and all(unicodedata.is_normalized("NFC", p) for p in seen_prompts if isinstance(p, str))
    assert any(QUESTIONS[0]["text"] in p for p in seen_prompts if isinstance(p, str))
    text = json.loads(out.read_text(encoding="utf-8"))["text"]
    assert text.startswith("Xin chào") and "\ufffd" not in text
    assert not any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in text)


def test_answers_record_the_question_set_and_each_question_fingerprint(tiny_bloom, questions, tmp_path):
    from vichat.evaluate.files import load_answers, question_fingerprint

    out = tmp_path / "answers.jsonl"
    r = run("--model", tiny_bloom, "--questions", questions, "--out", out, "--max-new-tokens", 3, "--limit", 2)
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [a["metadata"]["question_set"] for a in rows] == ["q.jsonl", "q.jsonl"]
    assert [a["metadata"]["question_fingerprint"] for a in rows] == [question_fingerprint(q["text"]) for q in QUESTIONS[:2]]
    assert load_answers(out)[2].question_fingerprint == question_fingerprint(QUESTIONS[1]["text"])
    # Resuming into that file with other questions under the same ids is refused.
    other = tmp_path / "q.jsonl"
    other.write_text("".join(json.dumps({**q, "text": q["text"] + "?"}, ensure_ascii=False) + "\n" for q in QUESTIONS),
                     encoding="utf-8")
    r = run("--model", tiny_bloom, "--questions", other, "--out", out, "--max-new-tokens", 3)
    assert r.exit_code == 2 and "already holds an answer to another question 1" in r.output


def test_out_under_a_file_is_refused_before_the_model_loads(tmp_path, questions):
    afile = tmp_path / "afile"
    afile.write_text("x")
    # "no-such-model" would be its own error: the output path is checked first.
    r = run("--model", "no-such-model", "--questions", questions, "--out", afile / "x.jsonl")
    assert r.exit_code == 2 and f"error: --out {afile / 'x.jsonl'}: {afile} is a file, not a folder" in r.output


def test_set_and_questions_together_are_refused_and_a_set_file_keeps_its_template(tmp_path, questions, shared_data,
                                                                                   monkeypatch):
    from vichat.evaluate.commands import _questions

    monkeypatch.setenv("VICHAT_SHARED_DATA", str(shared_data))
    r = run("--model", "no-such-model", "--set", "icliniq100-vi", "--questions", questions, "--out", tmp_path / "x.jsonl")
    assert r.exit_code == 2 and "not both" in r.output
    icliniq = shared_data / "eval" / "icliniq100_questions_vi.jsonl"
    assert _questions(None, str(icliniq)) == (icliniq, "doctor")
    assert _questions(None, str(questions))[1] == "chat"
