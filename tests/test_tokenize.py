"""Tokenizers and SFT tokenisation: loss mask, EOS, truncation, padding, packing, grouping.

Both tokenizer styles are trained here, in a fraction of a second, on Vietnamese lines written for
this test, so every check runs offline and exercises the real code paths of BLOOM-like (pad token,
BOS/EOS distinct) and GPT-J-like (no pad token, EOS = BOS = UNK) tokenizers.
"""

from __future__ import annotations

import copy
import json
import random
import unicodedata

import pytest
import torch

from vichat.data import tokenizers as tokmod
from vichat.data.templates import CHAT, DOCTOR, render_prompt
from vichat.data.tokenize import (
    IGNORE_INDEX,
    DataCollatorForSFT,
    encode_text,
    length_grouped_batches,
    pack_examples,
    packed_attention_mask,
    tokenize_record,
)
from vichat.data.tokenizers import default_tokenizer, load_tokenizer, train_bpe_tokenizer
from vichat.models import apply_tokenizer_fixes
from vichat.records import Record, VichatError
from vichat.specs import Architecture, BaseModelSpec

SENTENCES = [
    "Hà Nội là thủ đô của nước Cộng hòa Xã hội Chủ nghĩa Việt Nam.",
    "Thành phố Hồ Chí Minh là trung tâm kinh tế lớn nhất cả nước.",
    "Phở là món ăn truyền thống nổi tiếng của người Việt.",
    "Hãy giải thích ngắn gọn về quang hợp ở thực vật.",
    "Quang hợp là quá trình cây xanh dùng ánh sáng để tạo ra chất hữu cơ.",
    "Tôi bị đau đầu và sốt nhẹ từ hôm qua, tôi nên làm gì?",
    "Bạn nên nghỉ ngơi, uống nhiều nước và theo dõi nhiệt độ cơ thể.",
    "Nếu sốt cao trên ba ngày, hãy đi khám bác sĩ ngay.",
    "Viết một bài thơ ngắn về mùa thu ở Hà Nội.",
    "Mùa thu về, lá vàng rơi nhẹ trên phố cổ.",
    "Liệt kê ba lợi ích của việc đọc sách mỗi ngày.",
    "Đọc sách giúp mở rộng kiến thức, cải thiện trí nhớ và giảm căng thẳng.",
    "Dịch câu sau sang tiếng Anh: Tôi yêu Việt Nam.",
    "Con mèo đang ngủ trên ghế sofa cạnh cửa sổ.",
    "Bệnh nhân có triệu chứng ho khan, đau họng và mệt mỏi kéo dài.",
    "Huyết áp của tôi là một trăm bốn mươi trên chín mươi, có nguy hiểm không?",
    "Chỉ số này hơi cao; bạn nên giảm muối và tập thể dục đều đặn.",
    "Sông Mê Kông chảy qua sáu quốc gia trước khi đổ ra biển Đông.",
    "Ngôn ngữ lập trình Python rất phổ biến trong học máy.",
    "Hàm sau trả về tổng của hai số: def cong(a, b): return a + b",
    "Tiếng Việt có sáu thanh điệu: ngang, huyền, sắc, hỏi, ngã, nặng.",
    "Những chữ cái đặc biệt gồm ă, â, đ, ê, ô, ơ và ư.",
    "Ông bà ta thường nói: có công mài sắt, có ngày nên kim.",
    "Vịnh Hạ Long là di sản thiên nhiên thế giới được UNESCO công nhận.",
    "Trẻ em cần được tiêm chủng đầy đủ theo lịch của Bộ Y tế.",
    "Thuốc kháng sinh chỉ nên dùng khi có chỉ định của bác sĩ.",
    "Tóm tắt đoạn văn sau trong một câu.",
    "Người dùng hỏi: làm thế nào để học tiếng Anh hiệu quả?",
    "Hãy luyện nghe mỗi ngày, học từ vựng theo chủ đề và nói chuyện với người bản xứ.",
    "Năm 2023, dân số Việt Nam vào khoảng một trăm triệu người.",
]
CORPUS = [render_prompt(CHAT, ""), render_prompt(DOCTOR, "")] + [
    f"{SENTENCES[i % len(SENTENCES)]} {SENTENCES[(7 * i + 3) % len(SENTENCES)]}" for i in range(300)
]
VOCAB = 1200


@pytest.fixture(scope="module")
def bloom_tok():
    return train_bpe_tokenizer(CORPUS, vocab_size=VOCAB, style="bloom")


@pytest.fixture(scope="module")
def gptj_tok():
    return train_bpe_tokenizer(CORPUS, vocab_size=VOCAB, style="gptj")


@pytest.fixture(params=["bloom", "gptj"])
def tok(request, bloom_tok, gptj_tok):
    return {"bloom": bloom_tok, "gptj": gptj_tok}[request.param]


def unmasked(example: dict) -> list[int]:
    return [t for t in example["labels"] if t != IGNORE_INDEX]


# --------------------------------------------------------------------------- tokenizers


def test_bloom_style_special_tokens(bloom_tok):
    t = bloom_tok
    assert [t.unk_token, t.bos_token, t.eos_token, t.pad_token] == ["<unk>", "<s>", "</s>", "<pad>"]
    assert [t.unk_token_id, t.bos_token_id, t.eos_token_id, t.pad_token_id] == [0, 1, 2, 3]
    ids = t("Xin chào Việt Nam")["input_ids"]  # default call: BLOOM adds no BOS/EOS
    assert t.bos_token_id not in ids and t.eos_token_id not in ids
    assert t.padding_side == "right"
    assert len(t) <= VOCAB


def test_gptj_style_special_tokens(gptj_tok):
    t = gptj_tok
    assert t.pad_token is None and t.pad_token_id is None
    assert t.bos_token == t.eos_token == t.unk_token == "<|endoftext|>"
    assert t.all_special_tokens == ["<|endoftext|>"]
    ids = t("Xin chào Việt Nam")["input_ids"]
    assert t.eos_token_id not in ids


VIETNAMESE = [
    "Xin chào! Tôi là trợ lý ảo tiếng Việt.",
    "Những chữ: ă â đ ê ô ơ ư Ă Â Đ Ê Ô Ơ Ư — ả ã ạ ằ ẳ ẵ ặ ẩ ẫ ậ ề ể ễ ệ ổ ỗ ộ ờ ở ỡ ợ ừ ử ữ ự ỳ ỷ ỹ ỵ",
    "  hai dấu cách đầu, tab\tvà\n\nxuống dòng  ",
    "Mã: def f(x): return {'khóa': x}  # chú thích 🍜😀",
    "Ngoại ngữ 日本語 và tiếng Nga: Привет",
    "Một chữ không có trong dữ liệu huấn luyện: Quỳnh Nguyễn khuỷu tay",
]


@pytest.mark.parametrize("text", VIETNAMESE)
def test_vietnamese_round_trips_exactly(tok, text):
    ids = encode_text(tok, text)
    assert tok.unk_token_id not in ids  # byte-level: nothing is unknown
    assert tok.decode(ids) == text


def test_round_trip_on_real_vietnamese_data(shared_data, bloom_tok, gptj_tok):
    path = shared_data / "vi_instructions" / "vi_alpaca_gpt4vn.jsonl"
    texts = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f):
            row = json.loads(line)
            if i < 3000 or not unicodedata.is_normalized("NFC", row["prompt"] + row["response"]):
                texts += [row["prompt"], row["response"]]
    assert any(not unicodedata.is_normalized("NFC", t) for t in texts)  # the set has decomposed accents
    for t in (bloom_tok, gptj_tok):
        ids = t(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        decoded = t.batch_decode(ids)
        assert decoded == [unicodedata.normalize("NFC", x) for x in texts]


def test_decomposed_text_is_normalised_to_nfc(tok):
    composed = "Tiếng Việt có dấu: Thuở, Chào, người"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    assert encode_text(tok, decomposed) == encode_text(tok, composed)
    assert tok.decode(encode_text(tok, decomposed)) == composed


def test_special_token_strings_in_text_stay_text(bloom_tok, gptj_tok):
    for t in (bloom_tok, gptj_tok):
        text = f"Mô hình kết thúc bằng {t.eos_token} nhé"
        ids = encode_text(t, text)
        assert t.eos_token_id not in ids
        assert t.decode(ids) == text
        assert t.eos_token_id in t(text, add_special_tokens=False)["input_ids"]  # the default would inject it


def test_training_is_deterministic():
    a = train_bpe_tokenizer(CORPUS, vocab_size=800, style="gptj")
    b = train_bpe_tokenizer(list(CORPUS), vocab_size=800, style="gptj")
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    c = train_bpe_tokenizer(CORPUS, vocab_size=800, style="gptj", max_texts=50, seed=3)
    d = train_bpe_tokenizer(CORPUS, vocab_size=800, style="gptj", max_texts=50, seed=3)
    assert c.backend_tokenizer.to_str() == d.backend_tokenizer.to_str()


def test_train_rejects_bad_input():
    with pytest.raises(ValueError, match="style"):
        train_bpe_tokenizer(CORPUS, style="llama")
    with pytest.raises(ValueError, match="non-empty"):
        train_bpe_tokenizer(["", ""])


def test_default_tokenizer_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("VICHAT_CACHE_DIR", str(tmp_path))
    first = default_tokenizer(CORPUS, vocab_size=600)
    (folder,) = (tmp_path / "tokenizers").iterdir()
    assert folder.name.startswith("default-") and (folder / "tokenizer.json").exists()

    def no_training(*a, **k):
        raise AssertionError("the cached tokenizer should have been loaded, not retrained")

    monkeypatch.setattr(tokmod, "train_bpe_tokenizer", no_training)
    second = default_tokenizer(CORPUS, vocab_size=600)
    assert second.get_vocab() == first.get_vocab()
    assert (second.bos_token, second.eos_token, second.pad_token) == ("<s>", "</s>", "<pad>")
    assert encode_text(second, VIETNAMESE[1]) == encode_text(first, VIETNAMESE[1])
    # A different input is a different cache entry.
    monkeypatch.setattr(tokmod, "train_bpe_tokenizer", train_bpe_tokenizer)
    default_tokenizer(CORPUS[:100], vocab_size=600)
    assert len(list((tmp_path / "tokenizers").iterdir())) == 2


def test_load_tokenizer_none_trains_on_the_bundled_sample(tmp_path, monkeypatch):
    monkeypatch.setenv("VICHAT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tokmod, "sample_texts", lambda: CORPUS)
    t = load_tokenizer()
    assert t.eos_token == "</s>" and t.pad_token == "<pad>"
    assert t.decode(encode_text(t, VIETNAMESE[0])) == VIETNAMESE[0]


def test_sample_texts_reads_instruction_input_output(tmp_path, monkeypatch):
    (tmp_path / "sample").mkdir()
    rows = [{"instruction": "Chào", "input": "", "output": "Xin chào"}, {"instruction": "Hỏi", "input": "Ngữ cảnh", "output": "Đáp"}]
    (tmp_path / "sample" / "general.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    import importlib.resources

    monkeypatch.setattr(importlib.resources, "files", lambda package: tmp_path)
    with pytest.raises(VichatError, match="medical.jsonl is missing"):
        tokmod.sample_texts()
    (tmp_path / "sample" / "medical.jsonl").write_text('{"instruction": "Đau đầu", "output": "Nghỉ ngơi"}\n')
    texts = tokmod.sample_texts()
    assert texts == [render_prompt(CHAT, ""), render_prompt(DOCTOR, ""), "Chào", "Xin chào", "Hỏi", "Ngữ cảnh", "Đáp", "Đau đầu", "Nghỉ ngơi"]
    (tmp_path / "sample" / "medical.jsonl").write_text('{"instruction": "x", "output": "y"}\n{oops\n')
    with pytest.raises(VichatError, match=r"sample/medical.jsonl:2: not valid JSON"):
        tokmod.sample_texts()


def test_sample_texts_reads_the_bundled_files():
    from importlib import resources

    root = resources.files("vichat.data")
    if not all(root.joinpath(n).is_file() for n in tokmod.SAMPLE_FILES):
        pytest.skip("bundled sample files not written yet")
    texts = tokmod.sample_texts()
    assert texts[0] == render_prompt(CHAT, "") and len(texts) > 2


def test_load_tokenizer_from_local_directory(gptj_tok, tmp_path):
    gptj_tok.save_pretrained(str(tmp_path / "tok"))
    t = load_tokenizer(str(tmp_path / "tok"))
    assert t.get_vocab() == gptj_tok.get_vocab()
    assert t.pad_token is None and t.eos_token == "<|endoftext|>"


def test_load_tokenizer_missing_directory_is_actionable(tmp_path):
    with pytest.raises(VichatError, match="no such tokenizer directory"):
        load_tokenizer(str(tmp_path / "nope"))


def _registry_with(monkeypatch, *specs):
    from vichat import plugins
    from vichat.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def register_base_models(self, register):
            for s in specs:
                register(s)

    reg = plugins.build_registry(extra=[("test-models", Plugin())], entry_points=False, strict=True)
    monkeypatch.setattr(plugins, "get_registry", lambda: reg)
    return reg


def test_load_tokenizer_offline_hub_says_pass_a_directory(monkeypatch):
    import huggingface_hub.constants

    _registry_with(monkeypatch)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(VichatError, match="unreachable.*local tokenizer directory"):
        load_tokenizer("some-org/some-model-that-is-not-cached")


def test_load_tokenizer_by_base_model_name_applies_fixes(gptj_tok, tmp_path, monkeypatch):
    gptj_tok.save_pretrained(str(tmp_path / "gptj"))
    spec = BaseModelSpec(
        name="tiny-gptj",
        description="A GPT-J-like test model.",
        hub_id=str(tmp_path / "gptj"),
        architecture=Architecture("gptj", 2, 32, 4, len(gptj_tok)),
        lora_targets=("q_proj", "v_proj"),
        pad_token="eos",
        padding_side="left",
    )
    reg = _registry_with(monkeypatch, spec)
    t = load_tokenizer("tiny-gptj", registry=reg)
    assert t.pad_token == t.eos_token == "<|endoftext|>"
    assert t.pad_token_id == t.eos_token_id
    assert t.padding_side == "left"


# --------------------------------------------------------------------------- tokenize_record


@pytest.mark.parametrize("template", [CHAT, DOCTOR], ids=["chat", "doctor"])
def test_labels_cover_exactly_the_response_and_eos(tok, template):
    rec = Record(id="1", instruction="Thủ đô của Việt Nam là gì?", output="Hà Nội là thủ đô của Việt Nam.")
    ex = tokenize_record(rec, tok, template, max_length=256)
    prompt_ids = encode_text(tok, render_prompt(template, rec.instruction))
    response_ids = encode_text(tok, rec.output)

    assert ex["input_ids"] == prompt_ids + response_ids + [tok.eos_token_id]
    assert ex["n_prompt_tokens"] == len(prompt_ids)
    assert ex["labels"] == [IGNORE_INDEX] * len(prompt_ids) + response_ids + [tok.eos_token_id]
    assert ex["attention_mask"] == [1] * len(ex["input_ids"])
    assert ex["truncated"] is False
    assert ex["input_ids"][0] != tok.bos_token_id or tok.bos_token_id == tok.eos_token_id  # no BOS by default
    assert tok.decode(unmasked(ex)) == rec.output + tok.eos_token
    assert tok.decode(ex["input_ids"][: ex["n_prompt_tokens"]]) == render_prompt(template, rec.instruction)


def test_mapping_with_input_is_joined(bloom_tok):
    ex = tokenize_record(
        {"instruction": "Tóm tắt đoạn văn sau.", "input": "Phở là món ăn nổi tiếng.", "output": "Phở nổi tiếng."},
        bloom_tok,
        "chat",
    )
    prompt = bloom_tok.decode(ex["input_ids"][: ex["n_prompt_tokens"]])
    assert prompt == render_prompt(CHAT, "Tóm tắt đoạn văn sau.\n\nPhở là món ăn nổi tiếng.")


def test_missing_fields_are_reported(bloom_tok):
    with pytest.raises(ValueError, match="output"):
        tokenize_record({"instruction": "x"}, bloom_tok)


def test_bos_only_when_asked(tok):
    rec = {"instruction": "Chào bạn", "output": "Xin chào!"}
    plain = tokenize_record(rec, tok)
    with_bos = tokenize_record(rec, tok, add_bos=True)
    assert with_bos["input_ids"] == [tok.bos_token_id] + plain["input_ids"]
    assert with_bos["labels"] == [IGNORE_INDEX] + plain["labels"]
    assert with_bos["n_prompt_tokens"] == plain["n_prompt_tokens"] + 1


def test_decomposed_record_gives_the_same_tokens(bloom_tok):
    rec = {"instruction": "Thủ đô của Việt Nam là gì?", "output": "Hà Nội."}
    nfd = {k: unicodedata.normalize("NFD", v) for k, v in rec.items()}
    raw = copy.deepcopy(bloom_tok)
    raw.backend_tokenizer.normalizer = None  # like BLOOM's tokenizer, which does not normalise
    assert encode_text(raw, nfd["output"]) != encode_text(raw, rec["output"])
    assert tokenize_record(nfd, raw) == tokenize_record(rec, raw) == tokenize_record(rec, bloom_tok)


def test_special_token_text_in_a_record_is_not_an_eos(tok):
    ex = tokenize_record({"instruction": f"Viết {tok.eos_token} ra", "output": f"Đây: {tok.eos_token}"}, tok)
    assert ex["input_ids"].count(tok.eos_token_id) == 1 and ex["input_ids"][-1] == tok.eos_token_id


def test_prompt_boundary_matches_joint_encoding(tok):
    # The contract is "pieces encoded separately"; with these templates (ending in "\n") and
    # byte-level pre-tokenisation it also equals encoding the joined text, for text starting a word.
    for i, s in enumerate(SENTENCES):
        rec = {"instruction": SENTENCES[i - 1], "output": s}
        ex = tokenize_record(rec, tok)
        joint = encode_text(tok, render_prompt(CHAT, rec["instruction"]) + s)
        assert ex["input_ids"][:-1] == joint


LONG_INSTRUCTION = " ".join(SENTENCES * 4)
SHORT_RESPONSE = "Hà Nội là thủ đô của Việt Nam."


@pytest.mark.parametrize("template", [CHAT, DOCTOR], ids=["chat", "doctor"])
def test_truncation_cuts_the_instruction_and_keeps_the_response(tok, template):
    max_length = 96
    ex = tokenize_record({"instruction": LONG_INSTRUCTION, "output": SHORT_RESPONSE}, tok, template, max_length)
    n = ex["n_prompt_tokens"]
    response_ids = encode_text(tok, SHORT_RESPONSE)
    assert ex["truncated"] is True
    assert len(ex["input_ids"]) <= max_length
    assert ex["input_ids"][n:] == response_ids + [tok.eos_token_id]  # the whole response, then EOS
    assert ex["labels"][-1] == tok.eos_token_id and ex["labels"][:n] == [IGNORE_INDEX] * n

    prompt = tok.decode(ex["input_ids"][:n])
    head, tail = template.prompt.split("{instruction}")
    assert prompt.startswith(head) and prompt.endswith(tail) and prompt.endswith("### Response:\n")
    kept = prompt[len(head) : len(prompt) - len(tail)]
    assert kept and LONG_INSTRUCTION.startswith(kept) and len(kept) < len(LONG_INSTRUCTION)
    # Exact: the cut prompt's ids are what encoding that prompt text gives...
    assert ex["input_ids"][:n] == encode_text(tok, render_prompt(template, kept))
    # ...and the cut is as small as possible: one more character would not fit.
    budget = max_length - len(response_ids) - 1
    assert n <= budget
    assert len(encode_text(tok, render_prompt(template, LONG_INSTRUCTION[: len(kept) + 1]))) > budget


def test_input_is_cut_before_the_instruction(bloom_tok):
    rec = {"instruction": "Tóm tắt đoạn văn sau.", "input": LONG_INSTRUCTION, "output": SHORT_RESPONSE}
    ex = tokenize_record(rec, bloom_tok, CHAT, 80)
    prompt = bloom_tok.decode(ex["input_ids"][: ex["n_prompt_tokens"]])
    assert prompt.startswith(render_prompt(CHAT, "Tóm tắt đoạn văn sau.\n\n").split("\n### Response")[0])
    assert prompt.endswith("\n### Response:\n") and ex["truncated"]


@pytest.mark.parametrize("label_eos", [True, False])
def test_overlong_response_is_cut_from_its_end_and_still_ends_in_eos(tok, label_eos):
    max_length = 128
    response = " ".join(SENTENCES * 3)
    rec = {"instruction": "Kể một câu chuyện dài.", "output": response}
    ex = tokenize_record(rec, tok, CHAT, max_length, label_truncated_eos=label_eos)
    n = ex["n_prompt_tokens"]
    assert ex["truncated"] and len(ex["input_ids"]) == max_length
    assert tok.decode(ex["input_ids"][:n]) == render_prompt(CHAT, rec["instruction"])  # short prompt: untouched
    kept = ex["input_ids"][n:-1]
    assert kept == encode_text(tok, response)[: len(kept)]  # a prefix of the response's tokens
    assert ex["input_ids"][-1] == tok.eos_token_id
    assert ex["labels"][-1] == (tok.eos_token_id if label_eos else IGNORE_INDEX)
    assert ex["labels"][n:-1] == kept


def test_both_too_long_prompt_keeps_half(tok):
    max_length = 128
    rec = {"instruction": LONG_INSTRUCTION, "output": " ".join(SENTENCES * 3)}
    ex = tokenize_record(rec, tok, CHAT, max_length)
    n = ex["n_prompt_tokens"]
    assert len(ex["input_ids"]) == max_length
    assert max_length // 2 - 4 <= n <= max_length // 2  # cut to the floor, give or take a token boundary
    assert tok.decode(ex["input_ids"][:n]).endswith("\n### Response:\n")
    ex2 = tokenize_record(rec, tok, CHAT, max_length, min_prompt_tokens=100)
    assert 96 <= ex2["n_prompt_tokens"] <= 100 and len(ex2["input_ids"]) == max_length


def test_max_length_smaller_than_the_template_is_an_error(tok):
    with pytest.raises(ValueError, match="too small for template 'chat'"):
        tokenize_record({"instruction": LONG_INSTRUCTION, "output": "x"}, tok, CHAT, 8)


# --------------------------------------------------------------------------- collator


def _examples(tok):
    return [
        tokenize_record({"instruction": "Chào bạn", "output": "Xin chào! Tôi có thể giúp gì?"}, tok),
        tokenize_record({"instruction": SENTENCES[5], "output": SENTENCES[6] + " " + SENTENCES[7]}, tok),
    ]


@pytest.mark.parametrize("multiple", [None, 8])
def test_collator_right_pads_and_masks_pad_positions(tok, multiple):
    exs = _examples(tok)
    batch = DataCollatorForSFT(tok, pad_to_multiple_of=multiple)(exs)
    lens = [len(e["input_ids"]) for e in exs]
    width = max(lens) if multiple is None else -(-max(lens) // multiple) * multiple
    assert set(batch) == {"input_ids", "labels", "attention_mask"}
    assert batch["input_ids"].shape == batch["labels"].shape == (2, width)
    assert all(v.dtype == torch.long for v in batch.values())
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for row, (e, n) in enumerate(zip(exs, lens)):
        assert batch["input_ids"][row, :n].tolist() == e["input_ids"]
        assert batch["labels"][row, :n].tolist() == e["labels"]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["input_ids"][row, n:].tolist() == [pad_id] * (width - n)
        assert batch["labels"][row, n:].tolist() == [IGNORE_INDEX] * (width - n)
        # -100 exactly on prompt positions and pad positions
        masked = (batch["labels"][row] == IGNORE_INDEX).nonzero().flatten().tolist()
        assert masked == list(range(e["n_prompt_tokens"])) + list(range(n, width))


def test_gptj_pad_is_eos_and_the_real_eos_keeps_its_label(gptj_tok):
    spec = BaseModelSpec(
        name="gptj-like", description="d", hub_id="", architecture=Architecture("gptj", 1, 8, 1, 10),
        lora_targets=("q_proj",), pad_token="eos",
    )
    t = apply_tokenizer_fixes(copy.deepcopy(gptj_tok), spec)  # a copy: the fixture is shared
    assert t.pad_token_id == t.eos_token_id
    exs = _examples(t)
    batch = DataCollatorForSFT(t)(exs)
    short = min(range(2), key=lambda r: len(exs[r]["input_ids"]))
    n = len(exs[short]["input_ids"])
    row_ids, row_labels = batch["input_ids"][short], batch["labels"][short]
    assert (row_ids[n - 1 :] == t.eos_token_id).all()  # the real EOS, then padding EOS tokens
    assert row_labels[n - 1] == t.eos_token_id  # the real EOS is trained on
    assert (row_labels[n:] == IGNORE_INDEX).all()  # the padding EOS tokens are not
    response = [x for x in row_labels.tolist() if x != IGNORE_INDEX]
    assert t.decode(response) == "Xin chào! Tôi có thể giúp gì?" + t.eos_token


def _tiny_gptj(tok, attn="eager"):
    from transformers import GPTJConfig, GPTJForCausalLM

    torch.manual_seed(0)
    cfg = GPTJConfig(
        vocab_size=len(tok), n_positions=256, n_embd=32, n_layer=2, n_head=4, rotary_dim=4,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    cfg._attn_implementation = attn
    return GPTJForCausalLM(cfg).eval()


def test_loss_is_taken_on_response_tokens_only(gptj_tok):
    model = _tiny_gptj(gptj_tok)
    batch = DataCollatorForSFT(gptj_tok)(_examples(gptj_tok))
    with torch.no_grad():
        out = model(**batch)
    logits = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])
    targets = batch["labels"][:, 1:].reshape(-1)
    keep = targets != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    assert torch.allclose(out.loss, expected, atol=1e-5)


# --------------------------------------------------------------------------- packing


def _fake(n: int, base: int) -> dict:
    return {"input_ids": [base + i for i in range(n)], "labels": [base + i for i in range(n)]}


def test_pack_examples_exact_output():
    exs = [_fake(3, 10), _fake(2, 20), _fake(4, 30), _fake(1, 40)]
    packs = pack_examples(exs, max_length=5)
    assert [p["example_ids"] for p in packs] == [[2, 3], [0, 1]]
    assert packs[0] == {
        "input_ids": [30, 31, 32, 33, 40],
        "labels": [IGNORE_INDEX, 31, 32, 33, IGNORE_INDEX],
        "position_ids": [0, 1, 2, 3, 0],
        "seq_lens": [4, 1],
        "cu_seqlens": [0, 4, 5],
        "example_ids": [2, 3],
    }
    assert packs[1]["position_ids"] == [0, 1, 2, 0, 1] and packs[1]["cu_seqlens"] == [0, 3, 5]


def test_pack_examples_keeps_every_token_once(tok):
    exs = [tokenize_record({"instruction": s, "output": SENTENCES[-i]}, tok, max_length=64) for i, s in enumerate(SENTENCES)]
    packs = pack_examples(exs, max_length=128)
    assert sorted(i for p in packs for i in p["example_ids"]) == list(range(len(exs)))
    for p in packs:
        assert len(p["input_ids"]) == sum(p["seq_lens"]) == p["cu_seqlens"][-1] <= 128
        assert p["input_ids"] == [t for i in p["example_ids"] for t in exs[i]["input_ids"]]
        starts = [i for i, pos in enumerate(p["position_ids"]) if pos == 0]
        assert starts == p["cu_seqlens"][:-1]
    with pytest.raises(ValueError, match="more than max_length"):
        pack_examples(exs, max_length=10)


def test_packed_attention_mask_is_block_diagonal_causal():
    m = packed_attention_mask([2, 1], length=4).int().tolist()
    assert m == [
        [1, 0, 0, 0],
        [1, 1, 0, 0],
        [0, 0, 1, 0],
        [0, 0, 0, 1],
    ]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_samples_do_not_attend_to_each_other(gptj_tok, attn):
    """A packed row gives each sample the same logits as running it alone."""
    model = _tiny_gptj(gptj_tok, attn)
    exs = _examples(gptj_tok) + [tokenize_record({"instruction": "Hỏi", "output": "Đáp"}, gptj_tok)]
    packs = pack_examples(exs, max_length=256)
    assert len(packs) == 1 and len(packs[0]["seq_lens"]) == 3
    batch = DataCollatorForSFT(gptj_tok, pad_to_multiple_of=64)(packs)
    assert "attention_mask" not in batch and "position_ids" in batch
    with torch.no_grad():
        # use_cache=False: with a cache, transformers ignores position_ids when building the mask
        packed = model(**batch, use_cache=False).logits[0]
        for i, start in zip(packs[0]["example_ids"], packs[0]["cu_seqlens"]):
            alone = model(input_ids=torch.tensor([exs[i]["input_ids"]])).logits[0]
            assert torch.allclose(packed[start : start + len(alone)], alone, atol=1e-4)


# --------------------------------------------------------------------------- length grouping


def test_length_grouped_batches_exact_without_shuffle():
    lengths = [5, 1, 4, 2, 3, 6]
    assert length_grouped_batches(lengths, batch_size=2, shuffle=False) == [[5, 0], [2, 4], [3, 1]]
    assert length_grouped_batches(lengths, batch_tokens=8, shuffle=False) == [[5], [0], [2, 4], [3, 1]]
    assert length_grouped_batches(lengths, batch_size=2, shuffle=False, mega_batch_mult=1) == [[0, 1], [2, 3], [5, 4]]


def test_length_grouped_batches_deterministic_and_complete():
    lengths = [(i * 37) % 101 + 1 for i in range(500)]
    a = length_grouped_batches(lengths, batch_size=8, seed=1, mega_batch_mult=4)
    assert a == length_grouped_batches(lengths, batch_size=8, seed=1, mega_batch_mult=4)
    assert a != length_grouped_batches(lengths, batch_size=8, seed=2, mega_batch_mult=4)
    assert sorted(i for b in a for i in b) == list(range(500))
    assert max(lengths[i] for i in a[0]) == max(lengths)  # the biggest batch first
    t = length_grouped_batches(lengths, batch_tokens=256, seed=1)
    assert sorted(i for b in t for i in b) == list(range(500))
    assert all(len(b) * max(lengths[i] for i in b) <= 256 for b in t)
    # grouping pays: much less padding than random batches of the same sizes
    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    order = list(range(500))
    random.Random(1).shuffle(order)
    ungrouped = [order[i : i + 8] for i in range(0, 500, 8)]
    assert padded(a) < 0.8 * padded(ungrouped)
    assert padded(length_grouped_batches(lengths, batch_size=8, seed=1)) < 1.05 * sum(lengths)
    with pytest.raises(ValueError, match="exactly one"):
        length_grouped_batches(lengths)


def test_examples_serialise_to_json(tok):
    # datasets.map / caching store these dicts: plain ints and bools only.
    ex = tokenize_record({"instruction": "Chào", "output": "Xin chào"}, tok)
    assert json.loads(json.dumps(ex)) == ex
