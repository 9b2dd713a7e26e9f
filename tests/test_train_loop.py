"""One-process training (transformers.Trainer underneath) on a tiny BLOOM: what a run leaves behind, and that it reloads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest_train import one_thread, subprocess_env, tiny, train_registry  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """One finished run, with the trainer (and its in-memory model) kept for comparisons."""
    import torch

    from vichat.train.trainer import TrainingRun

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bloom-run")
    trainer = TrainingRun(tiny.config(out), registry=train_registry(), show_progress=False)
    result = trainer.train()
    return trainer, result, out


def test_run_leaves_adapter_card_curve_log_and_tokenizer(trained, tiny):
    trainer, result, out = trained
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md", "loss_curve.png",
                 "training_log.jsonl", "tokenizer.json", "train_result.json", "vichat_train.json"):
        assert (out / name).is_file(), name
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "runs").glob("events.out.tfevents.*")), "TensorBoard events"

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny.bloom.resolve())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["lora_alpha"] == 16
    assert config["target_modules"] == ["query_key_value"] or set(config["target_modules"]) == {"query_key_value"}

    assert result.global_step == result.total_steps == 12  # 48 records / 8 per step x 2 epochs
    assert result.final_train_loss is not None and result.final_val_loss is not None
    assert result.tokens_per_second > 0 and result.trainable_params == 2 * 8 * (64 + 3 * 64)  # layers x r x (in + out)

    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    train_steps = [e["step"] for e in log if "loss" in e]
    assert train_steps == list(range(1, 13))
    assert [e["step"] for e in log if "val_loss" in e] == [3, 6, 9, 12]
    assert log[-1]["val_loss"] == pytest.approx(result.final_val_loss)

    card = (out / "README.md").read_text()
    manifest_sha = __import__("hashlib").sha256((tiny.data / "manifest.json").read_bytes()).hexdigest()
    for needle in ("library_name: peft", f"base_model: {tiny.bloom.resolve()}", "| training records | 48 |",
                   "| validation records | 16 |", manifest_sha, f"| trainable parameters | {result.trainable_params:,}",
                   f"{result.final_train_loss:.4f}", f"{result.final_val_loss:.4f}", "| lora_r | 8 |",
                   "| learning_rate | 0.01 |", "tokens per second", "PeftModel.from_pretrained"):
        assert needle in card, needle


def test_the_loss_goes_down(trained):
    _, result, _ = trained
    val = [e["val_loss"] for e in result.log if "val_loss" in e]
    assert val[-1] < val[0]


def test_checkpoints_are_complete_and_rotated(trained, tiny, tmp_path):
    from vichat.train.checkpoint import latest_checkpoint, list_checkpoints

    _, result, out = trained
    names = [p.name for p in list_checkpoints(out)]
    assert names == ["checkpoint-3", "checkpoint-6", "checkpoint-9", "checkpoint-12"]
    latest = latest_checkpoint(out)
    for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
                 "vichat_state.json"):
        assert (latest / name).is_file(), name
    state = json.loads((latest / "trainer_state.json").read_text())  # transformers' own: Trainer resumes from it
    assert state["global_step"] == 12 and state["epoch"] == 2.0
    ours = json.loads((latest / "vichat_state.json").read_text())
    assert ours["global_step"] == 12 and [e["step"] for e in ours["log"] if "loss" in e] == list(range(1, 13))
    assert not (out / "checkpoints" / ".staging").exists()

    # save_total_limit keeps the newest N.
    from vichat.train.trainer import run

    out2 = tmp_path / "limited"
    run(tiny.config(out2, epochs=1, save_total_limit=1), registry=train_registry(), show_progress=False)
    assert [p.name for p in list_checkpoints(out2)] == ["checkpoint-6"]


def test_adapter_reloads_with_plain_peft_without_vichat(trained, tiny, tmp_path):
    """Someone without vichat loads base + adapter with PeftModel.from_pretrained: same logits."""
    import torch

    trainer, _, out = trained
    text = "Hãy viết một phản hồi thích hợp cho chỉ dẫn dưới đây.\n### Instruction:\nXin chào\n### Response:\n"
    ids = trainer.tokenizer(text, return_tensors="pt").input_ids
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(input_ids=ids).logits[0]
    trainer.model.train()

    script = f"""
import sys, json
sys.modules["vichat"] = None  # importing vichat now fails: prove the adapter does not need it
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
adapter = {str(out)!r}
base_path = json.load(open(adapter + "/adapter_config.json"))["base_model_name_or_path"]
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), adapter).eval()
tok = AutoTokenizer.from_pretrained(adapter)
ids = tok({text!r}, return_tensors="pt").input_ids
with torch.no_grad():
    torch.save(model(input_ids=ids).logits[0], {str(tmp_path / 'logits.pt')!r})
"""
    proc = subprocess.run([sys.executable, "-c", script], env=subprocess_env(tmp_path), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "logits.pt")
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    # The adapter changed the model: the base alone gives other logits.
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny.bloom).eval()(input_ids=ids).logits[0]
    assert not torch.allclose(base, expected, atol=1e-4)


def test_fresh_run_into_a_folder_with_checkpoints_is_refused(trained, tiny):
    from vichat.records import VichatError
    from vichat.train.trainer import run

    _, _, out = trained
    with pytest.raises(VichatError, match="--resume auto"):
        run(tiny.config(out), registry=train_registry(), show_progress=False)


def test_data_named_by_dataset_is_prepared_into_the_output_dir(tiny, tmp_path):
    """--data vi-sample-chat (a registered dataset, as the tiny presets use) is prepared on the fly."""
    from vichat.train.trainer import run

    result = run(tiny.config(tmp_path / "o", data="vi-sample-chat", epochs=0.25),
                 registry=train_registry(), show_progress=False)
    assert (tmp_path / "o" / "data" / "train.jsonl").is_file()
    assert result.global_step >= 1
    assert "| mixture | vi-sample-chat |" in (tmp_path / "o" / "README.md").read_text()
