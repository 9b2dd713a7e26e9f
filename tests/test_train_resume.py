"""kill -9 and resume: checkpoints are atomic, and a resumed run ends where an uninterrupted one does."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from conftest_train import PY, REPO, one_thread, run_python, subprocess_env, tiny, train_registry  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")

LAUNCH = ["-m", "vichat.train.launch"]


def _result(out):
    return json.loads((out / "train_result.json").read_text())


def _train_losses(out):
    lines = (out / "training_log.jsonl").read_text().splitlines()
    return [(e["step"], e["loss"]) for e in map(json.loads, lines) if "loss" in e]


def test_kill_9_then_resume_matches_an_uninterrupted_run(tiny, tmp_path):
    import torch
    from safetensors.torch import load_file

    from vichat.train.checkpoint import latest_checkpoint

    args = tiny.cli_args(tmp_path / "ref", epochs=4)  # 24 steps, a checkpoint every 3
    ref = run_python(LAUNCH + args, tmp_path)
    assert ref.returncode == 0, ref.stderr[-3000:]

    out = tmp_path / "killed"
    proc = subprocess.Popen([PY, *LAUNCH, *tiny.cli_args(out, epochs=4)], cwd=REPO, env=subprocess_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while latest_checkpoint(out) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {err[-2000:]}"
    assert not (out / "train_result.json").exists()
    killed_at = latest_checkpoint(out)
    assert killed_at is not None and killed_at.name != "checkpoint-24"

    resumed = run_python(LAUNCH + tiny.cli_args(out, epochs=4, resume="auto"), tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    a, b = _result(tmp_path / "ref"), _result(out)
    assert b["resumed_from"] is not None and b["global_step"] == a["global_step"] == 24
    assert b["final_train_loss"] == pytest.approx(a["final_train_loss"], abs=1e-4)
    assert b["final_val_loss"] == pytest.approx(a["final_val_loss"], abs=1e-4)
    # The whole curve agrees, and the log has no steps twice (those after the checkpoint were redone).
    assert [s for s, _ in _train_losses(out)] == list(range(1, 25))
    for (s1, l1), (s2, l2) in zip(_train_losses(tmp_path / "ref"), _train_losses(out)):
        assert s1 == s2 and l1 == pytest.approx(l2, abs=1e-4)
    wa, wb = load_file(tmp_path / "ref" / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_a_crash_mid_save_leaves_the_previous_checkpoint_as_latest(tiny, tmp_path, monkeypatch):
    from vichat.train import checkpoint as ckpt
    from vichat.train.hf_trainer import VichatTrainer
    from vichat.train.trainer import run

    reference = run(tiny.config(tmp_path / "ref"), registry=train_registry(), show_progress=False)

    out = tmp_path / "crash"
    real_save_rng = VichatTrainer._save_rng_state

    def crash_at_step_6(self, folder):
        real_save_rng(self, folder)
        if str(folder).endswith("checkpoint-6"):
            raise KeyboardInterrupt("simulated crash in the middle of writing checkpoint-6")

    monkeypatch.setattr(VichatTrainer, "_save_rng_state", crash_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        run(tiny.config(out), registry=train_registry(), show_progress=False)
    monkeypatch.setattr(VichatTrainer, "_save_rng_state", real_save_rng)
    assert (out / "checkpoints" / ".staging" / "checkpoint-6").is_dir()  # the half-written one
    assert ckpt.latest_checkpoint(out).name == "checkpoint-3"

    result = run(tiny.config(out, resume="auto"), registry=train_registry(), show_progress=False)
    assert not (out / "checkpoints" / ".staging").exists()
    assert result.resumed_from.endswith("checkpoint-3")
    assert result.final_train_loss == pytest.approx(reference.final_train_loss, abs=1e-4)
    assert result.final_val_loss == pytest.approx(reference.final_val_loss, abs=1e-4)


def test_incomplete_checkpoint_folders_are_not_latest(tmp_path):
    from vichat.train.checkpoint import TrainState, latest_checkpoint

    root = tmp_path / "checkpoints"
    for step in (3, 6, 9, 12):
        (root / f"checkpoint-{step}").mkdir(parents=True)
        (root / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (root / "checkpoint-3" / "vichat_state.json").write_text(TrainState(global_step=3).to_json())
    (root / "checkpoint-6" / "vichat_state.json").write_text(TrainState(global_step=6).to_json())
    (root / "checkpoint-9" / "vichat_state.json").write_text('{"global_step": 9, "log": [')  # torn write
    # checkpoint-12: Trainer's files without vichat's state (killed in between)
    (root / ".staging" / "checkpoint-15").mkdir(parents=True)
    assert latest_checkpoint(tmp_path).name == "checkpoint-6"
    (root / "checkpoint-6" / "vichat_state.json").write_text(TrainState(global_step=5).to_json())  # wrong folder
    assert latest_checkpoint(tmp_path).name == "checkpoint-3"
    (root / "checkpoint-3" / "trainer_state.json").unlink()  # without transformers' state Trainer cannot resume
    assert latest_checkpoint(tmp_path) is None


def test_resume_with_other_settings_is_refused(tiny, tmp_path):
    from vichat.records import VichatError
    from vichat.train.trainer import run

    run(tiny.config(tmp_path / "o", epochs=0.5), registry=train_registry(), show_progress=False)
    with pytest.raises(VichatError, match="--learning-rate 0.01 -> 0.005"):
        run(tiny.config(tmp_path / "o", epochs=0.5, learning_rate=5e-3, resume="auto"), registry=train_registry(),
            show_progress=False)
    with pytest.raises(VichatError, match="no such checkpoint folder"):
        run(tiny.config(tmp_path / "o", resume=str(tmp_path / "nope")), registry=train_registry(), show_progress=False)


def test_resume_auto_without_checkpoints_starts_fresh(tiny, tmp_path):
    from vichat.train.trainer import run

    result = run(tiny.config(tmp_path / "new", epochs=0.5, resume="auto"), registry=train_registry(),
                 show_progress=False)
    assert result.resumed_from is None and result.global_step == 3


def test_resume_between_log_lines_keeps_the_unlogged_steps(tiny, tmp_path):
    """logging every 4 steps, checkpoints every 3: the line at step 4 of a run resumed at step 3 still
    averages steps 1-4, as in the uninterrupted run."""
    import shutil

    from vichat.train.trainer import run

    settings = dict(logging_steps=4, save_steps=3)
    run(tiny.config(tmp_path / "ref", **settings), registry=train_registry(), show_progress=False)
    out = tmp_path / "resumed"
    shutil.copytree(tmp_path / "ref" / "checkpoints" / "checkpoint-3", out / "checkpoints" / "checkpoint-3")
    run(tiny.config(out, resume="auto", **settings), registry=train_registry(), show_progress=False)
    ref, res = _train_losses(tmp_path / "ref"), _train_losses(out)
    assert [s for s, _ in res] == [s for s, _ in ref] == [4, 8, 12]
    for (_, a), (_, b) in zip(ref, res):
        assert a == pytest.approx(b, abs=1e-6)


def test_a_refused_resume_names_every_changed_setting_with_old_and_new_values(tiny, tmp_path):
    """The clipping norm and the compute dtype change the math too; each change is named with its flag."""
    from vichat.records import VichatError
    from vichat.train.trainer import run

    import shutil

    out = tmp_path / "o"
    run(tiny.config(out, epochs=1), registry=train_registry(), show_progress=False)
    shutil.rmtree(out / "checkpoints" / "checkpoint-6")  # as if stopped after checkpoint-3
    changes = {"max_grad_norm": 0.001, "compute_dtype": "bf16", "weight_decay": 0.1, "adam_beta2": 0.95,
               "warmup_steps": 1, "lora_dropout": 0.1, "seed": 7}
    with pytest.raises(VichatError) as err:
        run(tiny.config(out, epochs=1, resume="auto", **changes), registry=train_registry(), show_progress=False)
    msg = str(err.value)
    for expected in ("--max-grad-norm 1.0 -> 0.001", "--compute-dtype fp32 -> bf16", "--weight-decay 0.0 -> 0.1",
                     "--adam-beta2 0.999 -> 0.95", "--warmup-steps 2 -> 1", "--lora-dropout 0.05 -> 0.1",
                     "--seed 42 -> 7"):
        assert expected in msg, msg
    with pytest.raises(VichatError, match=r"total steps \(from --epochs, the batch and the data\) 6 -> 12"):
        run(tiny.config(out, epochs=2, resume="auto"), registry=train_registry(), show_progress=False)
    # How the loss is computed (same math), logging and gradient checkpointing may change.
    result = run(tiny.config(out, epochs=1, resume="auto", loss="plain", logging_steps=2, eval_steps=5,
                             gradient_checkpointing=True), registry=train_registry(), show_progress=False)
    assert result.resumed_from.endswith("checkpoint-3") and result.global_step == 6


def _snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_refused_resume_leaves_the_prepared_data_untouched(tiny, tmp_path):
    """`vichat train tiny-doctor --output-dir out --resume auto` on a tiny-chat run: refused, and out/data (the
    chat run's records) is not rebuilt with the doctor data first."""
    from vichat.records import VichatError
    from vichat.train.trainer import run

    out = tmp_path / "o"
    run(tiny.config(out, data="vi-sample-chat", epochs=0.15), registry=train_registry(), show_progress=False)
    before = _snapshot(out / "data")
    with pytest.raises(VichatError, match="--template chat -> doctor"):
        run(tiny.config(out, data="vi-sample-doctor", template="doctor", epochs=0.15, resume="auto"),
            registry=train_registry(), show_progress=False)
    assert _snapshot(out / "data") == before
    with pytest.raises(VichatError, match=r"prepared from --data vi-sample-chat .*asks for --data vi-sample-doctor"):
        run(tiny.config(out, data="vi-sample-doctor", epochs=0.15, resume="auto"), registry=train_registry(),
            show_progress=False)
    assert _snapshot(out / "data") == before

    # A run on a prepared folder, resumed with a dataset name: the folder built for it is removed again.
    out2 = tmp_path / "o2"
    run(tiny.config(out2, epochs=0.5), registry=train_registry(), show_progress=False)
    with pytest.raises(VichatError, match="--data"):
        run(tiny.config(out2, data="vi-sample-chat", epochs=0.5, resume="auto"), registry=train_registry(),
            show_progress=False)
    assert not (out2 / "data").exists()


def test_a_checkpoint_of_an_older_vichat_still_resumes(tiny, tmp_path):
    """Checkpoints written before the plan named each setting (grouped lists, no clipping norm or dtype) are
    compared as they were then: same settings resume, other ones are refused."""
    import shutil

    from vichat.records import VichatError
    from vichat.train.checkpoint import STATE_FILE
    from vichat.train.data import plan_fingerprint
    from vichat.train.trainer import run

    out = tmp_path / "o"
    run(tiny.config(out, epochs=1), registry=train_registry(), show_progress=False)
    shutil.rmtree(out / "checkpoints" / "checkpoint-6")
    path = out / "checkpoints" / "checkpoint-3" / STATE_FILE
    state = json.loads(path.read_text())
    p = state["plan"]
    legacy = {k: p[k] for k in ("data", "base", "template", "max_length", "mode", "micro", "accumulation", "world",
                                "seed", "load_in")}
    legacy["lora"] = [p["lora_r"], p["lora_alpha"], p["lora_dropout"], p["lora_targets"]]
    legacy["optimizer"] = [p["optimizer"], p["learning_rate"], p["weight_decay"], p["adam_beta1"], p["adam_beta2"],
                           p["adam_epsilon"]]
    legacy["schedule"] = [p["lr_scheduler"], p["warmup_steps"], p["total_steps"]]
    state.update(plan=legacy, fingerprint=plan_fingerprint(legacy))
    path.write_text(json.dumps(state))
    with pytest.raises(VichatError, match="optimizer"):
        run(tiny.config(out, epochs=1, learning_rate=5e-3, resume="auto"), registry=train_registry(),
            show_progress=False)
    result = run(tiny.config(out, epochs=1, resume="auto"), registry=train_registry(), show_progress=False)
    assert result.resumed_from.endswith("checkpoint-3") and result.global_step == 6


def test_resuming_a_finished_run_trains_nothing_more_and_saves_the_same_adapter(tiny, tmp_path, capsys):
    # 0.5 epoch: the last checkpoint falls mid-epoch, where Trainer, resumed, ran one step past the end.
    from safetensors.torch import load_file

    from vichat.train.trainer import run

    out = tmp_path / "done"
    first = run(tiny.config(out, epochs=0.5), registry=train_registry(), show_progress=True)
    assert first.global_step == first.total_steps == 3
    adapter = load_file(out / "adapter_model.safetensors")
    log = (out / "training_log.jsonl").read_text()
    for gone in ("adapter_model.safetensors", "train_result.json", "README.md"):  # as if stopped before the final save
        (out / gone).unlink()
    again = run(tiny.config(out, epochs=0.5, resume="auto"), registry=train_registry(), show_progress=True)
    assert "checkpoint-3 is the run's last step (3 of 3): nothing left to train" in capsys.readouterr().err
    assert again.global_step == 3 and again.resumed_from is not None
    assert _result(out)["global_step"] == 3 and (out / "training_log.jsonl").read_text() == log
    saved = load_file(out / "adapter_model.safetensors")
    assert saved.keys() == adapter.keys() and all((saved[k] == adapter[k]).all() for k in adapter)
