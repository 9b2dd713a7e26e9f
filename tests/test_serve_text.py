"""Serving building blocks without a model: incremental decoding, stop markers, sampling, history."""

from __future__ import annotations

import random

import pytest
import torch

from serve_helpers import byte_token_ids, tokenizer
from vichat.data.templates import CHAT, DOCTOR, render_prompt
from vichat.serve.api import ModelError
from vichat.serve.history import fit_prompt, fold_history, stop_markers
from vichat.serve.sampling import Sampler, request_seed, sample_rows
from vichat.serve.text import REPLACEMENT, IncrementalDecoder, StopFilter, TokenTextStream, clean, final_text
from vichat.specs import Decoding

STOP = "### Instruction:"


# --------------------------------------------------------------------------- incremental decoding


def test_vietnamese_split_into_bytes_is_never_yielded_half_way():
    tok = tokenizer()
    text = "Việt Nam ệ ở đây"
    dec = IncrementalDecoder(tok)
    deltas = [dec.push(i) for i in byte_token_ids(tok, text)] + [dec.flush()]
    assert "".join(deltas) == text
    assert all(REPLACEMENT not in d for d in deltas)
    # "ệ" is 3 bytes: the first two give nothing, the third the whole character.
    ids = byte_token_ids(tok, "ệ")
    dec = IncrementalDecoder(tok)
    assert [dec.push(i) for i in ids] == ["", "", "ệ"]


def test_random_token_sequences_add_up_to_the_full_decode():
    tok = tokenizer()
    rng = random.Random(0)
    for _ in range(200):
        ids = [rng.randrange(4, len(tok)) for _ in range(rng.randrange(1, 40))]
        dec = IncrementalDecoder(tok)
        deltas = [dec.push(i) for i in ids] + [dec.flush()]
        assert "".join(deltas) == clean(tok.decode(ids))
        assert all(REPLACEMENT not in d for d in deltas)


# --------------------------------------------------------------------------- stop markers


def all_splits(text: str, rng: random.Random, n: int = 50):
    yield list(text)  # one character at a time
    for _ in range(n):
        cuts = sorted(rng.sample(range(1, len(text)), k=rng.randrange(0, min(8, len(text) - 1))))
        yield [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]


@pytest.mark.parametrize("text, expected", [
    ("Xin chào bạn.\n### Instruction:\nCâu hỏi khác", "Xin chào bạn."),
    ("Một câu ## có dấu thăng ### Instr nhưng không phải marker", "Một câu ## có dấu thăng ### Instr nhưng không phải marker"),
    ("  \n Trả lời ở đây\n\n", "Trả lời ở đây"),
    ("Kết thúc bằng nửa marker ### Instr", "Kết thúc bằng nửa marker ### Instr"),
    ("### Instruction: ngay từ đầu", ""),
])
def test_stop_marker_is_never_shown_however_it_is_split(text, expected):
    rng = random.Random(1)
    for parts in all_splits(text, rng):
        f = StopFilter([STOP])
        shown = []
        for part in parts:
            out = f.push(part)
            shown.append(out)
            # Nothing shown is ever taken back: the text so far is a prefix of the final answer.
            assert expected.startswith("".join(shown))
        shown.append(f.flush())
        assert "".join(shown) == expected == final_text(text, [STOP])


def test_held_text_is_released_once_it_cannot_be_a_marker():
    f = StopFilter([STOP])
    assert f.push("Đáp án\n") == "Đáp án"
    assert f.push("###") == ""  # could be the marker: held
    assert f.push(" Kết") == "\n### Kết"  # it was not
    assert not f.stopped


def test_token_stream_stops_on_a_marker_split_over_byte_tokens():
    tok = tokenizer()
    stream = TokenTextStream(tok, [STOP])
    shown = []
    for i in byte_token_ids(tok, "Chào bạn! Tôi là trợ lý.\n### Instruction:\nCâu tiếp"):
        shown.append(stream.push(i))
        if stream.stopped:
            break
    assert stream.stopped
    assert "".join(shown) == "Chào bạn! Tôi là trợ lý."
    assert all("#" not in s for s in shown)


# --------------------------------------------------------------------------- sampling


def test_batched_sampling_equals_each_row_alone():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 500, generator=g) * 3
    seen = [torch.randint(0, 500, (n,), generator=g) for n in (30, 3, 17, 1, 30)]
    settings = [Decoding(), Decoding(), Decoding(temperature=0), Decoding(temperature=0), Decoding(top_p=0.8)]
    alone = [Sampler(d, seed=i)(logits[i], seen[i]) for i, d in enumerate(settings)]
    rows = [(Sampler(d, seed=i), seen[i]) for i, d in enumerate(settings)]
    # Rows with equal settings go through the processors together (seen ids padded per row).
    assert sample_rows(logits, rows) == alone
    # One group holding every row (the whole batch's logits, no row selection).
    greedy = Decoding(temperature=0)
    assert sample_rows(logits, [(Sampler(greedy), x) for x in seen]) == [Sampler(greedy)(logits[i], x)
                                                                         for i, x in enumerate(seen)]


def test_sampler_greedy_seeded_and_top_k_one():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(300, generator=g)
    assert Sampler(Decoding(temperature=0, repetition_penalty=1.0))(logits, []) == int(logits.argmax())
    assert Sampler(Decoding(temperature=1.0, top_k=1, repetition_penalty=1.0), seed=5)(logits, []) == int(logits.argmax())

    def draws(seed: int) -> list[int]:
        sampler = Sampler(Decoding(temperature=1.5, top_k=0), seed=seed)
        return [sampler(logits, []) for _ in range(30)]

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)
    assert len(set(draws(7))) > 5  # it really samples
    assert request_seed(0, "m", "hi") == request_seed(0, "m", "hi") != request_seed(0, "m", "hi!")


def test_repetition_penalty_discourages_seen_tokens():
    logits = torch.tensor([2.0, 1.9, -1.0])
    assert Sampler(Decoding(temperature=0, repetition_penalty=1.2))(logits, [0]) == 1
    assert Sampler(Decoding(temperature=0, repetition_penalty=1.0))(logits, [0]) == 0


# --------------------------------------------------------------------------- history folding


def test_history_is_folded_into_earlier_instruction_response_blocks():
    prompt = fold_history(CHAT, "Còn Huế thì sao?", [("Thủ đô của Việt Nam là gì?", "Hà Nội."),
                                                    ("Dân số bao nhiêu?", " Khoảng 8 triệu người. \n")])
    assert prompt == (
        "Hãy viết một phản hồi thích hợp cho chỉ dẫn dưới đây.\n"
        "### Instruction:\nThủ đô của Việt Nam là gì?\n### Response:\nHà Nội.\n"
        "### Instruction:\nDân số bao nhiêu?\n### Response:\nKhoảng 8 triệu người.\n"
        "### Instruction:\nCòn Huế thì sao?\n### Response:\n"
    )
    # No history: exactly the training prompt, for both templates; braces are never formatted.
    for tpl in (CHAT, DOCTOR):
        assert fold_history(tpl, "Tôi bị {sốt} cao") == render_prompt(tpl, "Tôi bị {sốt} cao")
    assert fold_history(DOCTOR, "b", [("a", "x")]).count("Nếu bạn là bác sĩ") == 1


def test_stop_markers_are_the_templates_plus_its_response_marker():
    assert stop_markers(CHAT) == ("### Instruction:", "### Response:")
    assert stop_markers(DOCTOR, ["</s>", "### Response:"]) == ("### Instruction:", "### Response:", "</s>")


def test_fit_prompt_drops_oldest_turns_then_cuts_the_message():
    encode = lambda text: list(text.encode("utf-8"))  # noqa: E731 - one "token" per byte
    history = [("một " * 20, "hai " * 20), ("ba", "bốn"), ("năm", "sáu")]
    full = len(encode(fold_history(CHAT, "câu hỏi", history)))
    fitted = fit_prompt(encode, CHAT, "câu hỏi", history, context=full + 10, max_new_tokens=10)
    assert fitted.turns_dropped == 0 and len(fitted.ids) == full
    fitted = fit_prompt(encode, CHAT, "câu hỏi", history, context=full + 9, max_new_tokens=10)
    assert fitted.turns_dropped == 1 and fitted.text == fold_history(CHAT, "câu hỏi", history[1:])
    bare = len(encode(fold_history(CHAT, "")))
    fitted = fit_prompt(encode, CHAT, "x" * 500, history, context=bare + 20 + 5, max_new_tokens=5)
    assert fitted.message_cut and fitted.turns_dropped == 3
    assert fitted.text == fold_history(CHAT, "x" * 20) and len(fitted.ids) == bare + 20
    assert fitted.message_kept == 20
    with pytest.raises(ModelError, match="lower max_new_tokens"):
        fit_prompt(encode, CHAT, "x", [], context=bare, max_new_tokens=5)


def test_inverse_cdf_draws_follow_the_distribution_and_never_pick_a_removed_token():
    from vichat.serve.sampling import draw

    scores = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0, 0.0]])).repeat(4000, 1)
    g = torch.Generator().manual_seed(3)
    ids = draw(scores, [g] * len(scores))
    counts = [ids.count(i) / len(ids) for i in range(5)]
    assert counts[3] == counts[4] == 0
    assert abs(counts[0] - 0.5) < 0.03 and abs(counts[1] - 0.3) < 0.03 and abs(counts[2] - 0.2) < 0.03
