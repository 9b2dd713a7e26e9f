"""A real 2-process DeepSpeed ZeRO-2 LoRA run on CPU (torchrun, gloo, Trainer's DeepSpeed integration), and its resume."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest_train import one_thread, run_python, tiny, train_registry  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("one_thread")

TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "vichat.train.launch"]


@pytest.fixture(scope="module")
def ds_run(tiny, tmp_path_factory):
    """Two processes, ZeRO-2; dropout 0 so that it can be compared with one process exactly."""
    tmp = tmp_path_factory.mktemp("ds")
    proc = run_python(TORCHRUN + tiny.cli_args(tmp / "out", lora_dropout=0), tmp, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return tmp, proc


def test_two_process_zero2_run_saves_a_valid_adapter(ds_run, tiny):
    from vichat.train.adapter import verify_adapter
    from vichat.train.checkpoint import latest_checkpoint

    tmp, proc = ds_run
    out = tmp / "out"
    result = json.loads((out / "train_result.json").read_text())
    assert result["world_size"] == 2 and result["global_step"] == 12
    assert "batch 8 = 2 x 2 x 2 process(es)" in proc.stderr  # micro 2 x accumulation 2 x 2 processes
    # The adapter is non-empty and complete: 2 layers x (lora_A + lora_B) with the right shapes.
    expected = {}
    for layer in range(2):
        prefix = f"base_model.model.transformer.h.{layer}.self_attention.query_key_value"
        expected[f"{prefix}.lora_A.weight"] = (8, 64)
        expected[f"{prefix}.lora_B.weight"] = (192, 8)
    summary = verify_adapter(out, expected, steps_done=12)
    assert summary["zero_lora_B"] == 0 and summary["parameters"] == 4096
    # ZeRO-2 checkpoint: DeepSpeed state (frozen base excluded) and one RNG state per process.
    last = latest_checkpoint(out)
    assert last.name == "checkpoint-12"
    assert (last / "global_step12" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()
    assert (last / "rng_state_0.pth").is_file() and (last / "rng_state_1.pth").is_file()
    model_states = (last / "global_step12" / "mp_rank_00_model_states.pt").stat().st_size
    base_size = (tiny.bloom / "model.safetensors").stat().st_size
    assert model_states < base_size / 2, "the frozen base is not in the checkpoint"


def test_two_processes_follow_the_one_process_trajectory(ds_run, tiny, tmp_path):
    """Same micro-batch, same examples per step: ZeRO-2 over 2 processes = 1 process with 2x accumulation."""
    from vichat.train.trainer import run

    tmp, _ = ds_run
    one = run(tiny.config(tmp_path / "one", lora_dropout=0.0), registry=train_registry(), show_progress=False)
    two = json.loads((tmp / "out" / "train_result.json").read_text())
    assert two["final_train_loss"] == pytest.approx(one.final_train_loss, abs=1e-3)
    assert two["final_val_loss"] == pytest.approx(one.final_val_loss, abs=1e-3)


def test_zero2_resume_from_a_checkpoint_matches(ds_run, tiny, tmp_path):
    tmp, _ = ds_run
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp / "out" / "checkpoints" / "checkpoint-6", out / "checkpoints" / "checkpoint-6")
    proc = run_python(TORCHRUN + tiny.cli_args(out, lora_dropout=0, resume="auto"), tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "resuming from" in proc.stderr
    a = json.loads((tmp / "out" / "train_result.json").read_text())
    b = json.loads((out / "train_result.json").read_text())
    assert b["global_step"] == 12
    assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], abs=1e-4)
    assert b["final_val_loss"] == pytest.approx(a["final_val_loss"], abs=1e-4)


def test_one_process_under_torchrun_with_checkpointing(tiny, tmp_path):
    """One CPU process under torchrun is a DDP run (no DeepSpeed): with gradient checkpointing on a
    PeftModel, DDP must not look for unused parameters (it would stop at "marked ready twice")."""
    one = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m", "vichat.train.launch"]
    out = tmp_path / "out"
    proc = run_python(one + tiny.cli_args(out, epochs=1) + ["--gradient-checkpointing"], tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((out / "train_result.json").read_text())
    assert result["world_size"] == 1 and result["global_step"] == 6
