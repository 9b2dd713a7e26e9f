"""The LM-head losses: chunked and fused equal the plain full-logits loss in value and gradients, on
tiny BLOOM (tied embeddings) and GPT-J (LM head with a bias).

``fused`` is cut-cross-entropy (a test dependency): on this CPU through the package's torch.compile
implementation, the same ``linear_cross_entropy`` call, operands and bias folding as its Triton
kernel gets on CUDA (``test_cce_kernel_on_cuda_*`` runs where a GPU is present)."""

from __future__ import annotations

import pytest
from conftest_train import one_thread, tiny  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


def _available() -> list[str]:
    from vichat.train.loss import fused_backend

    return ["chunked"] + (["fused"] if fused_backend() else [])


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
    bias = model.get_output_embeddings().bias
    if bias is not None:  # GPT-J's head bias starts at zero: make it count in the values too
        torch.nn.init.normal_(bias, std=0.5)
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
    from vichat.train.loss import fused_backend, loss_notes, resolve_loss

    assert resolve_loss("auto", device="cpu", zero_stage=2) == "chunked"
    assert resolve_loss("plain", device="cpu", zero_stage=2) == "plain"
    assert resolve_loss("auto", device="cuda", zero_stage=3, world=2) == "plain"
    with pytest.raises(VichatError, match="ZeRO-3 partitions"):
        resolve_loss("chunked", device="cuda", zero_stage=3, world=2)
    assert loss_notes("chunked", "cpu") == [] and loss_notes("fused", "cuda") == []
    if fused_backend() is None:
        assert resolve_loss("auto", device="cuda", zero_stage=2) == "chunked"
        with pytest.raises(VichatError, match=r"pip install 'vichat\[fused\]'"):
            resolve_loss("fused", device="cpu", zero_stage=2)
    else:  # on CPU only when asked for: auto keeps the chunked loss, which holds less
        assert resolve_loss("auto", device="cuda", zero_stage=2) == "fused"
        assert resolve_loss("fused", device="cpu", zero_stage=2) == "fused"
        assert "torch.compile" in loss_notes("fused", "cpu")[0]


def _hidden_and_head(tiny, family):
    """The tiny model's final hidden states (a leaf, so their gradient is visible) and LM head."""
    from vichat.train.loss import causal_lm_of, head_parameters, lm_head_input

    model, batch, feats, tok = _model_and_batch(tiny, family)
    lm = causal_lm_of(model)
    with lm_head_input(lm) as captured:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    weight, bias = head_parameters(lm)
    return lm, captured["hidden"].detach().requires_grad_(True), weight, bias, batch["labels"], feats, tok


@pytest.mark.skipif(not _available()[1:], reason="cut-cross-entropy is not installed (pip install 'vichat[fused]')")
def test_fused_loss_through_a_biased_head_keeps_the_masking(tiny):
    """GPT-J's head has a bias, which cut-cross-entropy does not take: folded into the weight, the sum
    is the plain one; prompt and padding positions get no gradient, the EOS label is trained."""
    from vichat.data.tokenize import IGNORE_INDEX
    from vichat.train.loss import fold_bias, fused_loss_sum, token_loss_sum

    lm, hidden, weight, bias, labels, feats, tok = _hidden_and_head(tiny, "gptj")
    assert bias is not None and bias.abs().sum() > 0
    fused = fused_loss_sum(hidden, weight, bias, labels, impl="torch_compile")  # what a CPU run gets by default
    fused.backward()
    plain = token_loss_sum(lm.lm_head(hidden.detach()), labels)
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5)
    for row, f in enumerate(feats):
        start, end = f["n_prompt_tokens"], len(f["input_ids"])
        assert labels[row, end - 1] == tok.eos_token_id and (labels[row, :start] == IGNORE_INDEX).all()
        g = hidden.grad[row].abs().sum(-1)
        assert (g[: start - 1] == 0).all() and (g[end - 1 :] == 0).all()
        assert (g[start - 1 : end - 1] > 0).all()
    h, w = fold_bias(hidden[0], weight, bias)
    assert w.shape == (weight.size(0), weight.size(1) + 1)
    assert (h @ w.t()).allclose(lm.lm_head(hidden[0]))


def test_kernel_operands_are_16_bit_and_fp32_runs_fall_back_to_the_chunked_loss(tiny):
    """The Triton kernel's backward takes fp16/bf16 hidden states only: they follow a 16-bit weight;
    with fp32 throughout (no autocast) the chunked loss is used, with a warning, before any kernel."""
    import torch

    from vichat.train.loss import _kernel_dtype, chunked_loss_sum, fused_loss_sum

    f32, w16 = torch.zeros(2, 4), torch.zeros(8, 4, dtype=torch.float16)
    assert _kernel_dtype(f32, w16) == torch.float16
    assert _kernel_dtype(f32.bfloat16(), f32) == torch.bfloat16
    assert _kernel_dtype(f32, f32) is None
    _, hidden, weight, bias, labels, _, _ = _hidden_and_head(tiny, "gptj")
    hidden, weight, bias = hidden.float(), weight.float(), bias.float()
    with pytest.warns(UserWarning, match="fp32 throughout: using the chunked loss"):
        value = fused_loss_sum(hidden, weight, bias, labels, impl="cce")
    assert value.item() == chunked_loss_sum(hidden, weight, bias, labels).item()


@pytest.mark.skipif(not _available()[1:], reason="cut-cross-entropy is not installed (pip install 'vichat[fused]')")
def test_a_cpu_training_run_with_the_fused_loss_matches_the_chunked_one(tiny, tmp_path):
    """`--loss fused` on CPU (torch.compile implementation) through the whole trainer, on GPT-J's biased
    head: every logged training and validation loss equals the chunked run's."""
    from conftest_train import train_registry

    from vichat.train.trainer import TrainingRun

    logs = {}
    for loss in ("fused", "chunked"):
        run = TrainingRun(tiny.config(tmp_path / loss, family="gptj", loss=loss, epochs=1), registry=train_registry(),
                          show_progress=False)
        assert run.loss == loss
        assert any("torch.compile" in w for w in run.warnings) == (loss == "fused")
        logs[loss] = [(e["step"], e.get("loss"), e.get("val_loss")) for e in run.train().log]
    fused, chunked = logs["fused"], logs["chunked"]
    assert [s for s, *_ in fused] == [s for s, *_ in chunked] and sum(v is not None for *_, v in fused) >= 2
    for (_, a, va), (_, b, vb) in zip(fused, chunked):
        assert (a is None) == (b is None) and (a is None or a == pytest.approx(b, rel=1e-5))
        assert (va is None) == (vb is None) and (va is None or va == pytest.approx(vb, rel=1e-5))


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="needs a CUDA GPU")
@pytest.mark.skipif(not _available()[1:], reason="cut-cross-entropy is not installed (pip install 'vichat[fused]')")
@pytest.mark.parametrize("biased", [False, True])
def test_cce_kernel_on_cuda_matches_the_chunked_loss(biased):
    """The Triton kernel itself (GPU only) on fp16 operands with GPT-J's vocabulary, against the
    chunked loss in fp32 on the same values: the kernel's gradients are 16-bit and skip what its
    default filter (``filter_eps="high"``) drops, hence the looser gradient tolerance."""
    import torch

    from vichat.train.loss import chunked_loss_sum, fused_loss_sum

    torch.manual_seed(0)
    dev, V, d = "cuda", 50_400, 256
    hidden = (torch.randn(2, 100, d, device=dev) / d**0.5).half().requires_grad_(True)
    weight = (torch.randn(V, d, device=dev) / d**0.5).half().requires_grad_(True)
    bias = (torch.randn(V, device=dev) * 0.1).half().requires_grad_(True) if biased else None
    labels = torch.randint(0, V, (2, 100), device=dev)
    labels[:, :30] = -100
    params = [hidden, weight] + ([bias] if biased else [])
    ref = chunked_loss_sum(hidden.float(), weight.float(), None if bias is None else bias.float(), labels)
    ref_grads = torch.autograd.grad(ref, params)
    got = fused_loss_sum(hidden, weight, bias, labels)
    grads = torch.autograd.grad(got, params)
    assert got.item() == pytest.approx(ref.item(), rel=2e-3)
    for g, r in zip(grads, ref_grads):
        assert ((g.float() - r.float()).norm() / r.float().norm()).item() < 2e-2


def test_memory_model_counts_the_folded_head_copy_and_the_cpu_version():
    """The plan's fused-loss transient: + the folded copy of GPT-J's biased head (the very bytes
    :func:`fold_bias` allocates), nothing for BLOOM's unbiased head; on CPU it is counted as plain."""
    import torch

    from vichat.plugins import get_registry
    from vichat.train.loss import fold_bias
    from vichat.train.memory import estimate_memory

    def transient(name, loss, device="cuda", **kw):
        arch = get_registry().base_model(name).architecture
        args = dict(micro=8, seq=512, load_in="8bit", compute_dtype="fp16", checkpointing=True, n_lora=0)
        return arch, estimate_memory(arch, loss=loss, device=device, **{**args, **kw}).logits

    arch, fused = transient("gptj-6b-vi", "fused")
    hidden_grad = 2 * 2 * 8 * 512 * arch.hidden_size
    w16 = torch.zeros(arch.vocab_size, arch.hidden_size, dtype=torch.float16)
    folded = fold_bias(torch.zeros(1, arch.hidden_size, dtype=torch.float16), w16, torch.zeros(arch.vocab_size))[1]
    assert fused - hidden_grad == folded.untyped_storage().nbytes() == 50_400 * 4_097 * 2
    barch, bloom = transient("bloomz-7b1-mt", "fused")
    assert bloom == 2 * 2 * 8 * 512 * barch.hidden_size
    assert transient("gptj-6b-vi", "fused", device="cpu")[1] == transient("gptj-6b-vi", "plain", device="cpu")[1]
    # an fp32 head (quantised base without DeepSpeed: peft upcasts it) is copied at 4 bytes
    assert transient("gptj-6b-vi", "fused", deepspeed=False)[1] - hidden_grad == 50_400 * 4_097 * 4
