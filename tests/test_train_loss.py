"""The LM-head losses: chunked (and fused, where a CUDA kernel is installed) equal the plain full-logits
loss in value and gradients, on tiny BLOOM (tied embeddings) and GPT-J (LM head with a bias)."""

from __future__ import annotations

import pytest
from conftest_train import one_thread, tiny  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def _available() -> list[str]:
    import torch

    from vichat.train.loss import fused_backend

    return ["chunked"] + (["fused"] if torch.cuda.is_available() and fused_backend() else [])


def _model_and_batch(tiny, family):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from vichat.data.tokenize import DataCollatorForSFT, tokenize_record
    from vichat.records import Record

    path = tiny.bloom if family == "bloom" else tiny.gptj
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path).double()  # float64: compare the math, not rounding
    targets = ["query_key_value"] if family == "bloom" else ["q_proj", "v_proj"]
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    for name, p in model.named_parameters():  # lora_B starts at zero: move it so every gradient is non-zero
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    records = [Record(id=str(i), instruction=f"Câu hỏi {i}: thủ đô của Việt Nam?", output="Hà Nội. " * (1 + 2 * i))
               for i in range(3)]
    feats = [tokenize_record(r, tok, "chat", 96) for r in records]
    return model, DataCollatorForSFT(tok)(feats), feats, tok


@pytest.mark.parametrize("family", ["bloom", "gptj"])
def test_every_loss_equals_plain_in_value_and_gradients(tiny, family):
    import torch

    from vichat.train.loss import batch_loss_sum

    model, batch, _, _ = _model_and_batch(tiny, family)
    head = model.get_output_embeddings()
    if family == "gptj":
        assert head.bias is not None  # the bias path is exercised
        head.bias.requires_grad_(True)  # ... including its gradient
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def run(loss):
        model.zero_grad()
        value = batch_loss_sum(model, dict(batch), loss)
        value.backward()
        return value.detach(), {n: p.grad.detach().clone() for n, p in trained}

    plain, plain_grads = run("plain")
    assert plain > 0
    for loss in _available():
        value, grads = run(loss)
        assert value.item() == pytest.approx(plain.item(), rel=1e-5), loss
        for name, g in plain_grads.items():
            assert g.abs().sum() > 0, name
            rel = (grads[name] - g).norm() / g.norm()
            assert rel < 1e-5, (loss, name, float(rel))


def test_chunks_smaller_than_the_batch_give_the_same_loss_and_masking(tiny):
    """Chunks of 5 tokens; prompt and padding positions get no gradient, the EOS label is trained."""
    import torch

    from vichat.data.tokenize import IGNORE_INDEX
    from vichat.train.loss import causal_lm_of, chunked_loss_sum, head_parameters, lm_head_input, token_loss_sum

    model, batch, feats, tok = _model_and_batch(tiny, "bloom")
    labels = batch["labels"]
    lm = causal_lm_of(model)
    with lm_head_input(lm) as captured:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    assert out.logits.shape[-1] == 0  # the full logits were never computed
    hidden = captured["hidden"].detach().requires_grad_(True)
    weight, bias = head_parameters(lm)
    chunked = chunked_loss_sum(hidden, weight, bias, labels, chunk=5)
    chunked.backward()
    plain = token_loss_sum(lm.lm_head(hidden.detach()), labels)
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-6)  # fp32 logits, summed in another order
    for row, f in enumerate(feats):
        start, end = f["n_prompt_tokens"], len(f["input_ids"])
        assert labels[row, end - 1] == tok.eos_token_id  # EOS is a target
        assert (labels[row, :start] == IGNORE_INDEX).all()
        g = hidden.grad[row].abs().sum(-1)
        assert (g[: start - 1] == 0).all() and (g[end - 1 :] == 0).all()  # prompt / padding: no gradient
        assert (g[start - 1 : end - 1] > 0).all()
    # A batch with nothing to train on (a dummy pass) gives 0 and a graph that backward accepts.
    empty = chunked_loss_sum(hidden, weight, bias, torch.full_like(labels, IGNORE_INDEX))
    assert empty.item() == 0.0
    empty.backward()


def test_chunks_are_equal_and_never_larger_than_the_budget():
    """256 MiB of fp32 logits at most (267 tokens at 250,880 words), split evenly over the trained tokens."""
    from vichat.train.loss import CHUNK_BYTES, chunk_rows

    assert chunk_rows(250_880) == 267 == CHUNK_BYTES // (4 * 250_880)
    assert [chunk_rows(250_880, t) for t in (1, 100, 267, 268, 300, 534, 535)] == [1, 100, 267, 134, 150, 267, 179]
    assert chunk_rows(10**7) == 16  # a floor: a huge vocabulary still gets matmuls of useful size
    for tokens in range(1, 2000, 7):
        rows = chunk_rows(50_400, tokens)
        chunks = -(-tokens // rows)
        assert rows <= min(tokens, chunk_rows(50_400)) and chunks == -(-tokens // chunk_rows(50_400))


def test_loss_setting_is_resolved_with_clear_refusals():
    from vichat.records import VichatError
    from vichat.train.loss import fused_backend, resolve_loss

    assert resolve_loss("auto", device="cpu", zero_stage=2) == "chunked"
    assert resolve_loss("plain", device="cpu", zero_stage=2) == "plain"
    assert resolve_loss("auto", device="cuda", zero_stage=3, world=2) == "plain"
    with pytest.raises(VichatError, match="needs a CUDA GPU.*--loss chunked"):
        resolve_loss("fused", device="cpu", zero_stage=2)
    with pytest.raises(VichatError, match="ZeRO-3 partitions"):
        resolve_loss("chunked", device="cuda", zero_stage=3, world=2)
    if fused_backend() is None:
        assert resolve_loss("auto", device="cuda", zero_stage=2) == "chunked"
        with pytest.raises(VichatError, match=r"pip install 'vichat\[fused\]'"):
            resolve_loss("fused", device="cuda", zero_stage=2)
