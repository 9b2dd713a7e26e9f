"""User mistakes end in one clear `error:` line (exit code 2), refused by the dry run and the real run alike;
the CLI's own defects around launching, YAML files, Ctrl-C and what a run says about its data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from vichat.cli import main
from vichat.records import VichatError


@pytest.fixture
def no_run(monkeypatch):
    """The training loop and the launcher must not be reached: a refusal comes first."""
    from vichat.train import commands, trainer

    def fail(*args, **kwargs):
        raise AssertionError("reached the training loop / launcher")

    monkeypatch.setattr(trainer, "run", fail)
    monkeypatch.setattr(commands.subprocess, "call", fail)


def _cli(*args: str):
    return CliRunner().invoke(main, ["train", *args])


def _refused(res, *needles: str) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output and not isinstance(res.exception, AssertionError)
    lines = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, res.output
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- 1. the micro-batch under torchrun


def test_an_automatic_micro_batch_is_chosen_again_for_the_real_process_count(monkeypatch, tmp_path):
    """`torchrun --nproc_per_node 2 -m vichat.train.launch tiny-chat --device cpu`: the plan picks micro-batch
    16 for one process; the run has 2, so the micro-batch the user never set is chosen again (8 per process)."""
    from vichat.plugins import get_registry
    from vichat.train import commands, trainer

    seen = []
    monkeypatch.setattr(trainer, "run", lambda cfg, **kw: seen.append(cfg))
    args = {"device": "cpu", "zero_stage": 2, "output_dir": str(tmp_path / "ddp"), "epochs": 0.5}
    assert commands.train_main("tiny-chat", overrides=args, launched=True) == 0
    spec = get_registry().base_model("tiny")
    assert seen[-1].micro_batch_size is None and seen[-1].gradient_accumulation is None
    batch = trainer._batch_for(seen[-1], spec, 2)
    assert (batch.micro * batch.accumulation, batch.world) == (8, 2)
    # a micro-batch the user gave is kept as given, and still checked against the real process count
    commands.train_main("tiny-chat", overrides={**args, "micro_batch_size": 16}, launched=True)
    assert seen[-1].micro_batch_size == 16
    with pytest.raises(VichatError, match="micro-batch 16 does not divide the per-GPU batch 8"):
        trainer._batch_for(seen[-1], spec, 2)


# --------------------------------------------------------------------------- 2. GPUs asked for, none here


@pytest.mark.parametrize("args, needles", [
    (["tiny-chat", "--gpus", "2"], ["2 GPU processes", "no CUDA GPU here", "--gpus 1", "torchrun"]),
    (["bloomz-chat"], ["4 GPU processes", "no CUDA GPU here", "--gpus 1", "torchrun"]),
    (["tiny-chat", "--device", "cuda"], ["--device cuda", "no usable CUDA GPU", "--device cpu"]),
])
def test_a_gpu_run_without_cuda_is_refused_before_launching(monkeypatch, no_run, tmp_path, args, needles):
    from vichat.train import commands

    monkeypatch.setattr(commands, "_cuda_available", lambda: False)
    line = _refused(_cli(*args, "--output-dir", str(tmp_path / "o")), *needles)
    assert "--device cpu runs one process" not in line
    assert not (tmp_path / "o").exists()


def test_check_devices():
    from vichat.train.config import build_config
    from vichat.train.validate import check_devices

    check_devices(build_config("tiny-chat"), cuda=False)  # one process on the CPU
    check_devices(build_config("tiny-chat", overrides={"device": "cpu"}), cuda=False)
    check_devices(build_config("bloomz-chat"), cuda=True, cuda_devices=4)
    with pytest.raises(VichatError, match="--gpus 4, but 2 CUDA GPU"):
        check_devices(build_config("bloomz-chat"), cuda=True, cuda_devices=2)
    # a multi-node run's GPUs are on the hostfile's nodes, not here
    check_devices(build_config("bloomz-chat", overrides={"hostfile": "hosts", "num_nodes": 2}), cuda=False)


def test_the_training_run_refuses_device_cuda_without_cuda_before_touching_the_data(tmp_path):
    import torch

    from vichat.plugins import get_registry
    from vichat.train.config import build_config
    from vichat.train.trainer import TrainingRun

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    cfg = build_config("tiny-chat", overrides={"device": "cuda", "output_dir": str(tmp_path / "o")})
    with pytest.raises(VichatError, match="--device cuda, but torch"):
        TrainingRun(cfg, registry=get_registry())
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- 5. values out of range


BAD_VALUES = [
    (["--seed", "-1"], "--seed -1"),
    (["--adam-beta1", "2"], "--adam-beta1 2"),
    (["--adam-beta2", "1"], "--adam-beta2 1"),
    (["--learning-rate", "nan"], "--learning-rate nan"),
    (["--epochs", "inf"], "--epochs inf"),
    (["--weight-decay", "-0.1"], "--weight-decay -0.1"),
    (["--max-grad-norm", "-1"], "--max-grad-norm -1"),
    (["--save-total-limit", "0"], "--save-total-limit 0"),
    (["--gpu-mem-gb", "0"], "--gpu-mem-gb 0"),
]


@pytest.mark.parametrize("args, needle", BAD_VALUES)
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_out_of_range_values_are_refused_by_the_dry_run_and_the_run(no_run, tmp_path, args, needle, dry_run):
    res = _cli("tiny-chat", *args, "--device", "cpu", "--output-dir", str(tmp_path / "o"),
               *(["--dry-run"] if dry_run else []))
    _refused(res, needle)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_an_output_dir_that_cannot_be_a_folder_is_refused(no_run, tmp_path, dry_run):
    f = tmp_path / "a-file"
    f.write_text("x")
    extra = ["--device", "cpu"] + (["--dry-run"] if dry_run else [])
    _refused(_cli("tiny-chat", "--output-dir", str(f), *extra), "existing file, not a folder")
    _refused(_cli("tiny-chat", "--output-dir", str(f / "sub"), *extra), f"{f} is a file")


def test_a_negative_seed_is_refused_by_the_training_run_too(tmp_path):
    from vichat.plugins import get_registry
    from vichat.train.config import build_config
    from vichat.train.trainer import run

    cfg = build_config("tiny-chat", overrides={"device": "cpu", "seed": -1, "output_dir": str(tmp_path / "o")})
    with pytest.raises(VichatError, match="--seed -1"):
        run(cfg, registry=get_registry())
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- 6. what the dry run missed


@pytest.mark.parametrize("preset", ["tiny-chat", "bloomz-chat"])
def test_the_dry_run_refuses_packing_on_bloom(preset):
    _refused(_cli(preset, "--packing", "--dry-run"), "--packing is refused", "BLOOM")


def test_packing_with_an_explicit_group_by_length_warns():
    res = _cli("gptj-chat", "--packing", "--group-by-length", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "--packing with --group-by-length" in " ".join(res.output.split())
    res = _cli("gptj-chat", "--packing", "--dry-run")  # group-by-length is on by default: no warning then
    assert res.exit_code == 0 and "--packing with" not in res.output


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_empty_training_data_is_an_error(no_run, tmp_path, dry_run):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("")
    (tmp_path / "empty.jsonl").write_text("\n")
    for data in (tmp_path / "data", tmp_path / "empty.jsonl"):
        res = _cli("tiny-chat", "--data", str(data), "--device", "cpu", "--output-dir", str(tmp_path / "o"),
                   *(["--dry-run"] if dry_run else []))
        _refused(res, "no training records")


# --------------------------------------------------------------------------- 7. YAML files


def test_a_preset_in_the_yaml_file_that_differs_from_the_command_line_is_an_error(tmp_path):
    from vichat.train.config import build_config

    f = tmp_path / "f.yaml"
    f.write_text("lora_r: 4\npreset: tiny-doctor\n")
    line = _refused(_cli("tiny-chat", "--config", str(f), "--dry-run"), "'tiny-chat'", f"{f}:2", "tiny-doctor")
    assert "preset" in line
    assert build_config("tiny-doctor", f).template == "doctor"  # the same preset twice is fine
    assert build_config(None, f).preset == "tiny-doctor"


def test_a_setting_given_twice_in_the_yaml_file_is_an_error(tmp_path):
    from vichat.train.config import build_config

    f = tmp_path / "twice.yaml"
    f.write_text("lora_r: 4\nepochs: 1\nlora_r: 16\n")
    with pytest.raises(VichatError, match=r"twice.yaml:3: 'lora_r' is given twice: it was set on line 1"):
        build_config("tiny-chat", f)
    f.write_text("lora_r: 4\nlora-r: 16\n")  # the same setting, spelt two ways
    with pytest.raises(VichatError, match=r"twice.yaml:2: 'lora-r' is given twice.*as 'lora_r'"):
        build_config("tiny-chat", f)


def test_an_out_of_range_yaml_value_names_the_file_and_key(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("epochs: 1\nmax_length: 0\n")
    line = _refused(_cli("tiny-chat", "--config", str(f), "--dry-run"), f"{f}:2: max_length 0", "too short")
    assert "--max-length" not in line
    # a flag overrides the file: then the flag is what is named
    _refused(_cli("tiny-chat", "--config", str(f), "--max-length", "8", "--dry-run"), "--max-length 8")


# --------------------------------------------------------------------------- 10. the printed command line


def test_the_dry_run_command_line_is_shell_quoted():
    res = _cli("tiny-chat", "--lora-targets", "", "--dry-run")
    assert res.exit_code == 0, res.output
    assert "--lora-targets '' --gpus 1" in res.output


# --------------------------------------------------------------------------- 8 and 9: a real (tiny) run


from conftest_train import one_thread, tiny, train_registry  # noqa: E402,F401


def _tiny_overrides(tiny, out: Path, **over):
    cfg = tiny.config(out, **over)
    return {k: v for k, v in cfg.to_dict().items() if v is not None and k != "preset"}


def test_ctrl_c_says_which_checkpoint_is_kept_and_how_to_continue(tiny, tmp_path, monkeypatch, one_thread, capsys):
    from vichat.train import commands
    from vichat.train.hf_trainer import VichatCallback

    real = VichatCallback.on_step_end

    def interrupt_at_step_5(self, args, state, control, **kwargs):
        out = real(self, args, state, control, **kwargs)
        if state.global_step == 5:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(VichatCallback, "on_step_end", interrupt_at_step_5)
    out = tmp_path / "o"
    try:
        rc = commands.train_main(None, overrides=_tiny_overrides(tiny, out, save_steps=3))
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped train_main (the CLI then prints a bare 'Aborted!')")
    assert rc == 130
    err = capsys.readouterr().err
    assert f"{out / 'checkpoints' / 'checkpoint-3'} (step 3 of 12), is kept" in err
    assert "--resume auto to continue from it" in err
    # interrupted before the first checkpoint: nothing kept, said so
    monkeypatch.setattr(VichatCallback, "on_step_end", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert commands.train_main(None, overrides=_tiny_overrides(tiny, tmp_path / "o2")) == 130
    assert "no checkpoint was saved yet" in capsys.readouterr().err


def test_ctrl_c_on_the_command_line_is_not_a_bare_aborted(tiny, tmp_path, monkeypatch, one_thread):
    from vichat.train.hf_trainer import VichatCallback

    monkeypatch.setattr(VichatCallback, "on_step_end", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    args = []
    for k, v in _tiny_overrides(tiny, tmp_path / "o").items():
        if isinstance(v, bool):
            args.append(f"--{k.replace('_', '-')}" if v else f"--no-{k.replace('_', '-')}")
        else:
            args += [f"--{k.replace('_', '-')}", ",".join(v) if isinstance(v, list) else str(v)]
    res = _cli(*args)
    assert res.exit_code == 130, res.output
    assert "Aborted!" not in res.output and "interrupted: no checkpoint was saved yet" in res.output


def test_the_opening_lines_say_what_was_removed_or_cut(tiny, tmp_path, one_thread, capsys):
    """Duplicates removed, records dropped, records cut to --max-length, a tiny validation set: all on the console."""
    import shutil

    from vichat.data.prepare import MANIFEST_FILE, write_json_atomic
    from vichat.train.trainer import run

    data = tmp_path / "data"
    shutil.copytree(tiny.data, data)
    lines = (data / "validation.jsonl").read_text().splitlines()
    (data / "validation.jsonl").write_text(lines[0] + "\n")  # 1 validation record
    (data / "skipped.jsonl").write_text('{"location": "x:1", "kind": "invalid", "problem": "no output"}\n')
    manifest = json.loads((data / MANIFEST_FILE).read_text())
    manifest["counts"].update(duplicates_removed=3, dropped_corrupted_code=2)
    manifest["files"].pop("validation.jsonl")
    write_json_atomic(data / MANIFEST_FILE, manifest)

    run(tiny.config(tmp_path / "o", data=str(data), max_length=64, epochs=0.2), registry=train_registry(),
        show_progress=False)
    err = " ".join(capsys.readouterr().err.split())
    assert "3 duplicates removed, 2 dropped for code broken by translation" in err
    assert f"listed in {data / 'skipped.jsonl'}" in err
    cut = re.search(r"warning: (\d+) of 48 training records \((\d+)%\) are longer than --max-length 64", err)
    assert cut and int(cut.group(2)) > 25, err
    assert "warning: only 1 validation record" in err


def test_data_report_notes_a_small_share_of_cut_records(tmp_path):
    from vichat.records import Record
    from vichat.train.data import TrainingData, data_report

    rec = Record(id="a", instruction="i", input="", output="o")
    data = TrainingData(tmp_path, [rec] * 10, [rec] * 5, {"counts": {"duplicates_removed": 0}}, "")
    examples = [{"truncated": i < 2} for i in range(10)]
    notes, warnings = data_report(data, examples, 256)
    assert notes == ["data: 2 of 10 training records (20%) are longer than --max-length 256 and are cut to it "
                     "(the response's end is lost; the EOS is kept)"]
    assert warnings == []
    notes, warnings = data_report(data, [{"truncated": False}] * 10, 256)
    assert notes == warnings == []


def test_a_configuration_warning_is_said_once_by_a_real_run(tiny, tmp_path, one_thread):  # noqa: F811
    args = tiny.cli_args(tmp_path / "o", epochs=0.5, compute_dtype="fp16")
    res = _cli(*args)
    assert res.exit_code == 0, res.output
    assert res.output.count("warning: fp16 on CPU is slow") == 1 and "done: adapter in" in res.output
