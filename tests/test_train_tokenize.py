"""Tokenise once: batched tokenizer calls give the per-record ids, and the result is cached by data,
tokenizer, template and max length."""

from __future__ import annotations

import pytest
from conftest_train import tiny  # noqa: F401 (fixtures)


def _records(tiny):
    from vichat.records import Record
    from vichat.train.data import load_prepared

    data = load_prepared(tiny.data)
    extra = [
        Record(id="long-out", instruction="Viết dài.", output="Hà Nội là thủ đô. " * 60),  # response cut
        Record(id="long-in", instruction="Giải thích " * 80, output="Vâng."),  # instruction cut
        Record(id="special", instruction="Có </s> và <|endoftext|> trong văn bản", output="Đúng </s> vậy"),
        Record(id="nfd", instruction="Tie\u0302\u0301ng Vie\u0323\u0302t", input="ngữ cảnh", output="Được."),
    ]
    return data.train + data.validation + extra


@pytest.mark.parametrize("family", ["bloom", "gptj"])
def test_batched_tokenisation_gives_the_same_examples(tiny, family):
    from transformers import AutoTokenizer

    from vichat.data.tokenize import tokenize_record, tokenize_records

    tok = AutoTokenizer.from_pretrained(tiny.bloom if family == "bloom" else tiny.gptj)
    records = _records(tiny)
    for template in ("chat", "doctor"):
        one_by_one = [tokenize_record(r, tok, template, 96) for r in records]
        batched = tokenize_records(records, tok, template, 96, batch_size=7)
        assert batched == one_by_one
        assert any(e["truncated"] for e in batched) and not all(e["truncated"] for e in batched)


def test_tokenised_examples_are_cached_by_data_tokenizer_template_and_length(tiny, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    import vichat.data.tokenize as tokenize_module
    from vichat.records import Record
    from vichat.train.data import tokenize_all, tokenize_cache_dir

    monkeypatch.setenv("VICHAT_CACHE_DIR", str(tmp_path))
    tok = AutoTokenizer.from_pretrained(tiny.bloom)
    records = _records(tiny)
    first = tokenize_all(records, tok, "chat", 96)
    assert len(list(tokenize_cache_dir().glob("*.jsonl"))) == 1

    calls = []
    real = tokenize_module.tokenize_records
    monkeypatch.setattr(tokenize_module, "tokenize_records", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert tokenize_all(records, tok, "chat", 96) == first and calls == []  # read from the cache
    tokenize_all(records, tok, "chat", 80)
    tokenize_all(records, tok, "doctor", 96)
    tokenize_all(records[:-1] + [Record(id="nfd", instruction="khác", output="Được.")], tok, "chat", 96)
    tokenize_all(records, AutoTokenizer.from_pretrained(tiny.gptj), "chat", 96)
    assert len(calls) == 4 and len(list(tokenize_cache_dir().glob("*.jsonl"))) == 5
