"""Checkpoints that survive ``kill -9``: Trainer's checkpoint, assembled in a staging folder, renamed into place.

Layout of ``OUTPUT_DIR/checkpoints/checkpoint-N`` (transformers' names, so ``Trainer`` resumes from it)::

    adapter_config.json, adapter_model.safetensors   the LoRA weights, PEFT format (usable as an adapter)
    optimizer.pt, scheduler.pt [, scaler.pt]         one-process runs
    global_stepN/, latest                            DeepSpeed runs: the engine's state, frozen weights
                                                     excluded (LoRA weights, ZeRO-partitioned optimizer)
    rng_state.pth / rng_state_<R>.pth                python / numpy / torch (/ cuda) RNG of each process
    trainer_state.json                               transformers' state (step, epoch, ...)
    vichat_state.json                                vichat's: plan fingerprint, the log so far, tokens
                                                     and time so far, the unlogged steps; written last

A folder named ``checkpoint-N`` is complete by construction: everything goes into
``checkpoints/.staging/checkpoint-N`` first, is flushed to disk, and the folder is renamed (atomic
on POSIX). A crash mid-save leaves only the staging folder, which is ignored and removed at the
next start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..records import VichatError

STATE_FILE = "vichat_state.json"
HF_STATE_FILE = "trainer_state.json"
STEP_RE = re.compile(r"^checkpoint-(\d+)$")
STAGING = ".staging"
TMP_PREFIX = ".tmp-"


@dataclass
class TrainState:
    """Where the run is: enough to continue it exactly."""

    global_step: int = 0
    seed: int = 0
    fingerprint: str = ""
    plan: dict[str, Any] = field(default_factory=dict)  # what the fingerprint hashes, for error messages
    total_steps: int = 0
    world_size: int = 1
    tokens_seen: int = 0  # useful (non-padding) tokens trained on, all processes
    train_seconds: float = 0.0  # time inside training steps (not evaluation or saving)
    wall_seconds: float = 0.0  # wall time of the run up to this checkpoint (earlier sessions included)
    log: list[dict[str, Any]] = field(default_factory=list)
    window: dict[str, Any] = field(default_factory=dict)  # steps done since the last log line (not logged yet)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, indent=1)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainState":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def read_state(folder: Path) -> TrainState | None:
    """The checkpoint's state, or None when the folder is not a complete checkpoint."""
    try:
        data = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    m = STEP_RE.match(folder.name)
    if m and data.get("global_step") != int(m.group(1)):
        return None
    if not (folder / HF_STATE_FILE).is_file():
        return None
    return TrainState.from_dict(data)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = STEP_RE.match(p.name)
        if m and p.is_dir() and read_state(p) is not None:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``output_dir/checkpoints``, if any."""
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def find_resume_checkpoint(resume: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint ``--resume`` names: ``auto`` = the latest (None if there is none yet), or a path."""
    if not resume:
        return None
    if resume == "auto":
        return latest_checkpoint(output_dir)
    path = Path(resume).expanduser()
    if not path.is_dir():
        raise VichatError(f"--resume {resume}: no such checkpoint folder (use --resume auto for the latest "
                          f"under {checkpoints_dir(output_dir)})")
    if read_state(path) is None:
        raise VichatError(f"--resume {resume}: not a complete checkpoint (no valid {STATE_FILE}); "
                          f"complete ones: {', '.join(p.name for p in list_checkpoints(output_dir)) or 'none'}")
    return path


def remove_partial(output_dir: str | Path) -> None:
    """Remove the staging folder (and ``.tmp-*`` folders) that a killed save left behind."""
    root = checkpoints_dir(output_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name == STAGING or p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(staged: Path, state: TrainState, keep: int) -> Path:
    """Write ``vichat_state.json`` into the staged ``checkpoint-N``, flush everything, move it to
    ``checkpoints/checkpoint-N`` and delete the oldest checkpoints beyond ``keep``. One process only."""
    (staged / STATE_FILE).write_text(state.to_json(), encoding="utf-8")
    _fsync_tree(staged)
    root = staged.parent.parent
    final = root / staged.name
    if final.exists():  # left by an earlier run resumed from an older checkpoint: replace it
        trash = root / f"{TMP_PREFIX}old-{final.name}"
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.rename(staged, final)
    shutil.rmtree(staged.parent, ignore_errors=True)  # the emptied staging folder
    _fsync_dir(root)
    if keep > 0:
        for old in list_checkpoints(root.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final
