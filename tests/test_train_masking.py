"""Labels and masking: the loss sees response tokens only; GPT-J (pad = EOS) trains; packing rules."""

from __future__ import annotations

import json

import pytest
from conftest_train import one_thread, tiny, train_registry  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def _features(tokenizer, n=3):
    from vichat.data.tokenize import tokenize_record
    from vichat.records import Record

    records = [Record(id=str(i), instruction=f"Câu hỏi số {i}: thủ đô của Việt Nam?", output="Hà Nội." * (i + 1))
               for i in range(n)]
    return [tokenize_record(r, tokenizer, "chat", 96) for r in records]


def test_loss_counts_response_tokens_only(tiny):
    import torch
    import torch.nn.functional as F
    from transformers import AutoTokenizer

    from vichat.data.tokenize import IGNORE_INDEX, DataCollatorForSFT
    from vichat.train.data import label_tokens
    from vichat.train.model import token_loss_sum

    tok = AutoTokenizer.from_pretrained(tiny.bloom)
    feats = _features(tok)
    batch = DataCollatorForSFT(tok)(feats)
    labels = batch["labels"]
    torch.manual_seed(0)
    logits = torch.randn(*labels.shape, len(tok), requires_grad=True)

    loss = token_loss_sum(logits, labels)
    # What it must equal: cross-entropy over the response tokens + EOS of every row, nothing else.
    expected, count = 0.0, 0
    for row, f in enumerate(feats):
        start, end = f["n_prompt_tokens"], len(f["input_ids"])
        for pos in range(start, end):  # label at pos is predicted from logits at pos - 1
            expected += F.cross_entropy(logits[row, pos - 1][None], labels[row, pos][None]).item()
            count += 1
        assert labels[row, end - 1] == tok.eos_token_id  # EOS is trained
        assert (labels[row, :start] == IGNORE_INDEX).all() and (labels[row, end:] == IGNORE_INDEX).all()
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert count == sum(label_tokens(f) for f in feats)

    # No gradient reaches the logits of prompt or padding positions (they predict masked labels).
    loss.backward()
    for row, f in enumerate(feats):
        start, end = f["n_prompt_tokens"], len(f["input_ids"])
        assert logits.grad[row, : start - 1].abs().sum() == 0
        assert logits.grad[row, end - 1 :].abs().sum() == 0
        assert logits.grad[row, start - 1 : end - 1].abs().sum() > 0


def test_gptj_pad_is_eos_and_labels_are_masked_by_position(tiny, tmp_path):
    """GPT-J has no pad token: EOS pads, and the real EOS at the end of each sample keeps its label."""
    from vichat.train.trainer import TrainingRun

    trainer = TrainingRun(tiny.config(tmp_path / "gptj", family="gptj", epochs=1), registry=train_registry(),
                      show_progress=False)
    tok = trainer.tokenizer
    assert tok.pad_token_id == tok.eos_token_id
    feats = _features(tok)
    batch = trainer.collate(feats)
    for row, f in enumerate(feats):
        n = len(f["input_ids"])
        assert batch["labels"][row, n - 1] == tok.eos_token_id
        assert (batch["input_ids"][row, n:] == tok.eos_token_id).all()  # padded with EOS...
        assert (batch["labels"][row, n:] == -100).all()  # ...which is never a target
    result = trainer.train()
    assert result.global_step == 6
    losses = [e["loss"] for e in result.log if "loss" in e]
    assert all(l == l and 0 < l < 20 for l in losses)  # finite
    assert json.loads((tmp_path / "gptj" / "adapter_config.json").read_text())["target_modules"] in (
        ["q_proj", "v_proj"], ["v_proj", "q_proj"])


def test_packing_is_refused_for_bloom(tiny, tmp_path):
    from vichat.records import VichatError
    from vichat.train.trainer import TrainingRun

    with pytest.raises(VichatError, match="BLOOM.*position_ids.*--group-by-length"):
        TrainingRun(tiny.config(tmp_path / "p", packing=True), registry=train_registry(), show_progress=False)


def test_packing_trains_gptj_with_samples_kept_apart(tiny, tmp_path):
    """A packed batch gives each sample the logits it gets alone (position_ids, no attention mask)."""
    import torch

    from vichat.data.tokenize import pack_examples
    from vichat.train.model import forward_logits
    from vichat.train.trainer import TrainingRun

    from vichat.records import Record

    data = tmp_path / "short"  # short records, so that several fit in one packed sequence
    data.mkdir()
    with open(data / "train.jsonl", "w", encoding="utf-8") as fh:
        for i in range(40):
            fh.write(Record(id=str(i), instruction=f"Câu {i}?", output="Vâng. " * (1 + i % 7)).to_json() + "\n")
    trainer = TrainingRun(tiny.config(tmp_path / "packed", family="gptj", packing=True, group_by_length=False, epochs=1,
                                  data=str(data), max_length=256),
                      registry=train_registry(), show_progress=False)
    assert trainer.mode == "packed" and len(trainer.units) < len(trainer.train_examples)
    feats = _features(trainer.tokenizer)
    packs = pack_examples(feats, 96)
    model = trainer.model.eval()
    with torch.no_grad():
        packed = forward_logits(model, trainer._collate((0,), packs))[0]
        start = 0
        for i, n in zip(packs[0]["example_ids"], packs[0]["seq_lens"]):
            alone = forward_logits(model, trainer._collate((i,), feats))[0]
            assert torch.allclose(packed[start : start + n], alone[:n], atol=1e-4)
            start += n
    model.train()
    result = trainer.train()
    assert result.batching == "packed" and result.final_train_loss is not None
