"""int8 and NF4 (bitsandbytes, CPU backend) LoRA: forward, backward, and gradients in lora_A / lora_B.

With non-reentrant gradient checkpointing on, as in the paper's runs (and the unquantised case too)."""

from __future__ import annotations

import pytest
from conftest_train import one_thread, tiny, train_registry  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("family", ["bloom", "gptj"])
@pytest.mark.parametrize("load_in", ["8bit", "4bit", "none"])
def test_quantized_lora_forward_backward(tiny, tmp_path, load_in, family):
    import bitsandbytes as bnb
    import torch

    from vichat.train.data import tokenize_all
    from vichat.train.model import add_lora, forward_logits, load_base, make_optimizer, token_loss_sum

    registry = train_registry()
    cfg = tiny.config(tmp_path, family=family, load_in=load_in, gradient_checkpointing=True)
    spec = registry.base_model(cfg.base_model)
    model, tok = load_base(cfg, spec, "cpu")
    if load_in != "none":
        quant_cls = bnb.nn.Linear8bitLt if load_in == "8bit" else bnb.nn.Linear4bit
        assert any(isinstance(m, quant_cls) for m in model.modules()), "the base is really quantised"
    model = add_lora(model, cfg, spec.lora_targets)
    assert model.base_model.model.is_activation_checkpointing

    from vichat.data.tokenize import DataCollatorForSFT
    from vichat.train.data import load_prepared

    examples = tokenize_all(load_prepared(tiny.data).train[:2], tok, "chat", 64)
    batch = DataCollatorForSFT(tok)(examples)
    optimizer = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])

    def grads() -> dict[str, torch.Tensor]:
        optimizer.zero_grad()
        loss = token_loss_sum(forward_logits(model, batch), batch["labels"])
        assert torch.isfinite(loss)
        loss.backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    first = grads()
    assert first and all("lora_" in n for n in first), "only LoRA weights train"
    for name, g in first.items():
        assert g is not None and torch.isfinite(g).all(), name
        if "lora_B" in name:  # lora_B starts at 0, so lora_A's gradient is 0 until B has moved
            assert g.abs().sum() > 0, name
    optimizer.step()
    second = grads()
    for name, g in second.items():
        assert torch.isfinite(g).all() and g.abs().sum() > 0, name


def test_quantized_run_end_to_end(tiny, tmp_path):
    """A short int8 run through the trainer saves a valid adapter."""
    from vichat.train.trainer import run

    result = run(tiny.config(tmp_path / "q", load_in="8bit", epochs=0.5, gradient_checkpointing=True),
                 registry=train_registry(), show_progress=False)
    assert result.global_step == 3 and result.final_train_loss is not None
    assert (tmp_path / "q" / "adapter_model.safetensors").is_file()
