"""Statistics: exact numbers on a hand-made file, agreement with tokenize_record, the language rules."""

from __future__ import annotations

import json
import unicodedata

import pytest

from vichat.data.language import detect_language, has_vietnamese, looks_untranslated, record_looks_untranslated
from vichat.data import loading
from vichat.plugins import get_registry
from vichat.data.stats import compute_stats, format_stats, percentile, token_lengths
from vichat.specs import TemplateSpec


def load(ref, **kw):
    """The loader with the plugin registry, as the CLI calls it (names are looked up there)."""
    return loading.load(ref, **{"registry": get_registry(), **kw})


BARE = TemplateSpec(name="bare", description="Two marker words around the instruction.", prompt="Q: {instruction}\nA: ")


class WhitespaceTokenizer:
    """One token per whitespace-separated word; EOS id 0. Enough to know every count by hand."""

    eos_token_id = 0
    name_or_path = "whitespace"

    def __call__(self, texts, add_special_tokens=False, split_special_tokens=True):
        assert add_special_tokens is False
        return {"input_ids": [[1] * len(t.split()) for t in texts]}


HAND_MADE = [
    {"instruction": "một hai ba", "output": "bốn năm"},  # 2 + 3 + 2 + EOS = 8
    {"instruction": "xin mời", "input": "câu hỏi phụ", "output": "vâng"},  # 2 + (2 + 3) + 1 + 1 = 9
    {"instruction": "What is the capital of France", "output": "Paris is the capital"},  # 2+6+4+1 = 13, English
    {"instruction": " ".join(["từ"] * 20), "output": " ".join(["chữ"] * 30)},  # 2 + 20 + 30 + 1 = 53
    {"instruction": unicodedata.normalize("NFD", "Xin chào"), "output": "Chào bạn"},  # 7, decomposed
]


@pytest.fixture
def hand_made(tmp_path):
    path = tmp_path / "hand.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in HAND_MADE), encoding="utf-8")
    return load(str(path))


def test_stats_on_a_hand_made_file(hand_made):
    assert token_lengths(hand_made.records, WhitespaceTokenizer(), BARE) == [8, 9, 13, 53, 7]
    stats = compute_stats(hand_made, WhitespaceTokenizer(), template=BARE, max_length=12)
    assert stats.records == 5
    assert stats.total_tokens == 90
    assert stats.avg_tokens == 18.0
    assert stats.p95_tokens == 53  # nearest rank: ceil(0.95 * 5) = 5th of [7, 8, 9, 13, 53]
    assert stats.max_tokens == 53
    assert (stats.truncated, stats.truncated_share) == (2, 0.4)  # 13 and 53 exceed 12
    assert stats.non_nfc == 1
    assert (stats.untranslated, stats.untranslated_share) == (1, 0.2)
    assert stats.template == "bare" and stats.tokenizer == "whitespace"
    text = format_stats(stats)
    for expected in ("Samples", "Avg. tokens/sample", "18.0", "Tokens", "90", "truncated at 12", "40.0%"):
        assert expected in text


def test_stats_default_template_is_the_papers_chat_template(hand_made):
    from vichat.data.templates import CHAT, render_prompt

    bare_chat = len(render_prompt(CHAT, "").split())
    lengths = token_lengths(hand_made.records, WhitespaceTokenizer())
    assert lengths[0] == bare_chat + 3 + 2 + 1
    assert compute_stats(hand_made, WhitespaceTokenizer()).template == "chat"


def test_percentile_nearest_rank():
    assert percentile([], 95) == 0
    assert percentile([5], 95) == 5
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile(list(range(1, 21)), 95) == 19
    assert percentile([3, 1, 2], 50) == 2


def _bpe_tokenizer(texts, eos="</s>"):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=[eos], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos)


def test_token_lengths_match_the_training_tokenisation(shared_data):
    from vichat.data.tokenize import tokenize_record

    result = load("vi-alpaca", path=shared_data / "vi_instructions" / "vi_alpaca_gpt4vn.jsonl")
    records = result.records[:300]
    tok = _bpe_tokenizer([r.instruction + "\n" + r.output for r in records])
    lengths = token_lengths(records, tok, "chat")
    expected = [len(tokenize_record(r, tok, "chat", max_length=100_000)["input_ids"]) for r in records]
    assert lengths == expected
    doctor = token_lengths(records[:20], tok, "doctor")
    assert doctor == [len(tokenize_record(r, tok, "doctor", max_length=100_000)["input_ids"]) for r in records[:20]]


# --------------------------------------------------------------------------- language rules


def test_has_vietnamese_composed_and_decomposed():
    assert has_vietnamese("Xin chào") and has_vietnamese(unicodedata.normalize("NFD", "Xin chào"))
    assert has_vietnamese("đi") and has_vietnamese("ĂN")
    assert not has_vietnamese("Chia 45 cho 9") and not has_vietnamese("")


def test_looks_untranslated_rule():
    assert looks_untranslated("What is the capital of France?")
    assert not looks_untranslated("Thủ đô của Pháp là gì? What is the")  # has diacritics
    assert not looks_untranslated("of the in")  # fewer than 4 Latin words
    assert looks_untranslated("of the in to")  # 4 words, all stop words
    # 1 stop word in 9 words = 0.111 < 0.12; in 8 words = 0.125 >= 0.12
    assert not looks_untranslated("the Avengers Endgame Furious Spider Man Far Home Avatar")
    assert looks_untranslated("the Avengers Endgame Furious Spider Man Far Home")
    assert not looks_untranslated("A B C D E F")  # single letters are not words
    assert record_looks_untranslated("Dịch câu này.", "The quick brown fox jumps over the lazy dog")


def test_detect_language():
    assert detect_language(["Xin chào", "Cảm ơn", "OK"]) == "vi"
    assert detect_language(["Hello there", "Thanks", "Xin chào"]) == "vi"  # 1/3 >= 0.3
    assert detect_language(["Hello there", "Thanks", "Bye", "Xin chào"]) == "en"
    assert detect_language([]) == "vi"


def test_untranslated_count_on_vi_alpaca(shared_data):
    result = load("vi-alpaca", path=shared_data / "vi_instructions" / "vi_alpaca_gpt4vn.jsonl")
    count = sum(record_looks_untranslated(f"{r.instruction}\n{r.input}", r.output) for r in result.records)
    # MANIFEST.md reports 28 with an unpublished stop-word list; ours (docs/datasets.md) finds 35,
    # all code or English titles. Pinned so a change to the rule is noticed.
    assert count == 35
