"""`vichat train PRESET [--config FILE] [--flags] [--dry-run | --print-command]`.

Every :class:`TrainConfig` field is a flag (``lora_r`` -> ``--lora-r``), generated from the dataclass
so flags, YAML keys and the config never drift apart. Only click and the standard library load at
import; the planner is pure Python; torch loads only for a real run.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import replace
from typing import Any, Callable

import click

from ..records import VichatError
from .config import FIELDS, field_default, field_kind


def _field_options(func: Callable) -> Callable:
    for name in reversed(list(FIELDS)):
        meta = FIELDS[name].metadata
        if not meta.get("flag", True):
            continue
        dash, kind, choices = name.replace("_", "-"), field_kind(name), meta.get("choices") or ()
        default = field_default(name)
        help_text = meta["help"] + ("" if default is None else f" [default: {default}]")
        if kind == "bool":
            opt = click.option(f"--{dash}/--no-{dash}", name, default=None, help=help_text)
        elif choices and kind == "int":
            opt = click.option(f"--{dash}", name, type=click.IntRange(min(choices), max(choices)), help=help_text)
        elif choices:
            opt = click.option(f"--{dash}", name, type=click.Choice(choices), help=help_text)
        else:
            ptype = {"int": int, "float": float}.get(kind, str)
            opt = click.option(f"--{dash}", name, type=ptype, help=help_text)
        func = opt(func)
    return func


def train_main(
    preset: str | None,
    config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    dry_run: bool = False,
    as_json: bool = False,
    print_command: bool = False,
    n_records: int | None = None,
    avg_tokens: float | None = None,
    launched: bool = False,
    echo: Callable[[str], None] = click.echo,
) -> int:
    """What `vichat train` does; returns the exit code. Tests call it directly."""
    from ..plugins import get_registry
    from .config import build_config_origins, resolve
    from .launcher import launch_command
    from .plan import plan
    from .presets import PRESETS
    from .validate import check_devices, validate_config

    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if not preset and not config_file and "base_model" not in overrides:
        raise VichatError(f"name a preset ({', '.join(PRESETS)}), or give --config FILE or --base-model")
    if as_json and not (dry_run or print_command):
        raise VichatError("--json goes with --dry-run or --print-command")
    cfg, origins = build_config_origins(preset, config_file, overrides)
    registry = get_registry()
    spec = registry.base_model(cfg.base_model)
    registry.template(cfg.template)  # an unknown template fails here, naming the registered ones

    if dry_run:
        p = plan(cfg, spec, n_train_records=n_records, avg_tokens=avg_tokens, origins=origins)
        echo(json.dumps(p.to_dict(), ensure_ascii=False, indent=2) if as_json else p.report())
        return 0
    if print_command:
        plan(cfg, spec, n_train_records=n_records, avg_tokens=avg_tokens, origins=origins)  # refuse before printing
        cmd = launch_command(cfg)
        echo(json.dumps(cmd) if as_json else shlex.join(cmd))
        return 0
    # A run that needs GPUs this machine lacks is refused here, once, before a launcher starts N
    # workers that each fail, or before the data is prepared and the weights loaded.
    cuda = _cuda_available() if cfg.device != "cpu" else False
    check_devices(cfg, cuda=cuda, cuda_devices=None if launched or not cuda else _cuda_device_count(),
                  torch_version=None if cfg.device == "cpu" else _torch_version())
    if (cfg.world_size > 1 or cfg.hostfile) and not launched:
        # refuse before launching
        p = plan(cfg, spec, n_train_records=n_records, avg_tokens=avg_tokens, origins=origins)
        if not p.fits:
            click.echo(f"warning: {p.verdict}", err=True)
        cmd = launch_command(cfg, python=sys.executable)
        if shutil.which(cmd[0]) is None:  # the console script may be off PATH inside a venv
            cmd = [sys.executable, "-m", "deepspeed.launcher.runner", *cmd[1:]]
        click.echo(f"launching: {shlex.join(cmd)}", err=True)
        try:
            return subprocess.call(cmd)
        except KeyboardInterrupt:  # the workers got the Ctrl-C too; rank 0 says what was kept
            return 130

    user_micro, user_accumulation = cfg.micro_batch_size, cfg.gradient_accumulation
    cfg = resolve(cfg, spec, cuda=cuda if cfg.device == "auto" else None)
    p = plan(cfg, spec, n_train_records=n_records, avg_tokens=avg_tokens, origins=origins)
    # The run announces the configuration's warnings itself (validate_config again, for its real
    # process count): only what the plan alone knows (the warm-up against the step count) is said here.
    announced = set(validate_config(p.config, spec, origins=origins))
    for w in p.warnings:
        if w not in announced:
            click.echo(f"warning: {w}", err=True)
    if not p.fits:
        click.echo(f"warning: {p.verdict}", err=True)
    try:
        from .trainer import run
    except ImportError as exc:
        if exc.name == f"{__package__}.trainer":
            raise VichatError(
                "training loop not available yet (vichat.train.trainer is not part of this version); "
                "`vichat train ... --dry-run` plans the run without it"
            ) from None
        raise VichatError(f"cannot start training: {exc}. Install the training extras (torch, peft, "
                          "bitsandbytes, deepspeed)") from exc
    # The plan's micro-batch was chosen for the config's world size; the run may have another (a CPU
    # run under torchrun has several processes), so only a micro-batch the user gave is passed on
    # as given: an automatic one is chosen again for the real process count.
    run_cfg = replace(p.config, micro_batch_size=user_micro, gradient_accumulation=user_accumulation)
    try:
        run(run_cfg, registry=registry)
    except KeyboardInterrupt:
        if int(os.environ.get("RANK", "0")) == 0:
            click.echo(interrupted_message(run_cfg), err=True)
        return 130
    return 0


def interrupted_message(cfg: Any) -> str:
    """What Ctrl-C (or ``kill``) left: the checkpoint kept, and how to continue from it."""
    from .checkpoint import latest_checkpoint, read_state

    out = cfg.output_dir or "the output folder"
    latest = latest_checkpoint(out) if cfg.output_dir else None
    if latest is None:
        return (f"interrupted: no checkpoint was saved yet in {out} (the first comes at step {cfg.save_steps}); "
                "run the same command again to start over")
    state = read_state(latest)
    steps = f" (step {state.global_step} of {state.total_steps})" if state and state.total_steps else ""
    again = ("run the same command again (it has --resume auto)" if cfg.resume == "auto"
             else "run the same command with --resume auto")
    return (f"interrupted: the latest checkpoint, {latest}{steps}, is kept; {again} to continue from it "
            "(the steps after it are redone)")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _cuda_device_count() -> int:
    import torch

    return int(torch.cuda.device_count())


def _torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return str(torch.__version__)


@click.command(context_settings={"show_default": False})
@click.argument("preset", required=False)
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML file of settings (keys = the flag names; precedence: preset < file < flags).")
@click.option("--dry-run", is_flag=True, help="Plan only: parameters, steps, tokens, memory verdict. No weights.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable plan (with --dry-run or --print-command).")
@click.option("--print-command", is_flag=True, help="Print the launch command (deepspeed for --gpus > 1) and exit.")
@click.option("--records", "n_records", type=int, help="Training records, for the plan (default: from --data).")
@click.option("--avg-tokens", type=float, help="Mean tokens per record, for the plan (default: from --data).")
@click.option("--launched", is_flag=True, hidden=True, help="Set by the launcher in each worker process.")
@click.option("--model-path", "model_path", hidden=True, help="Renamed --base-path (still works, with a warning).")
@_field_options
def train(preset, config_file, dry_run, as_json, print_command, n_records, avg_tokens, launched, **overrides) -> None:
    """Fine-tune a base model with LoRA, from PRESET (bloomz-chat, bloomz-doctor, gptj-chat,
    gptj-doctor, tiny-chat, tiny-doctor) and/or --config FILE, overridden by flags.

    \b
      vichat train bloomz-chat --dry-run          plan the paper's run on 4 x 24 GiB
      vichat train bloomz-chat --gpus 4           launch it with DeepSpeed ZeRO-2
      vichat train gptj-doctor --print-command    show the deepspeed command line
    """
    rc = train_main(preset, config_file, overrides, dry_run=dry_run, as_json=as_json, print_command=print_command,
                    n_records=n_records, avg_tokens=avg_tokens, launched=launched)
    if rc:
        sys.exit(rc)


def run_worker(argv: list[str]) -> int:
    """Entry for each process the DeepSpeed launcher starts (``python -m vichat.train.launch ARGS``)."""
    from ..clitools import quiet_library_noise

    quiet_library_noise()  # what `vichat` does: each worker's log without unactionable library messages
    try:
        train.main(args=[*argv, "--launched"], prog_name="vichat.train.launch", standalone_mode=False)
    except VichatError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0
