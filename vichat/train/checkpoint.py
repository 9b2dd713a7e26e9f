"""Checkpoints that survive ``kill -9``: written into a temporary folder, renamed into place.

Layout of ``OUTPUT_DIR/checkpoints/step-N``::

    adapter_config.json, adapter_model.safetensors   the LoRA weights, PEFT format (usable as an adapter)
    optimizer.pt, scheduler.pt [, scaler.pt]         one-process runs
    deepspeed/                                       DeepSpeed runs: engine.save_checkpoint with frozen
                                                     weights excluded (LoRA weights, ZeRO-partitioned
                                                     optimizer state, scheduler)
    rng_rank<R>.pt                                   python / numpy / torch (/ cuda) RNG of each process
    trainer_state.json                               step, epoch, position in the epoch, seed, plan
                                                     fingerprint, the log so far; written last

A folder named ``step-N`` is complete by construction: everything goes into ``.tmp-step-N`` first,
is flushed to disk, and the folder is renamed (atomic on POSIX). A crash mid-save leaves only a
``.tmp-*`` folder, which is ignored and removed at the next start.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..records import VichatError

STATE_FILE = "trainer_state.json"
STEP_RE = re.compile(r"^step-(\d+)$")
TMP_PREFIX = ".tmp-"


@dataclass
class TrainState:
    """Where the run is: enough to continue it exactly."""

    global_step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0  # steps of ``epoch`` already done: the next step's index in the epoch's plan
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
    """Remove ``.tmp-*`` folders that a killed save left behind."""
    root = checkpoints_dir(output_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(TMP_PREFIX):
                shutil.rmtree(p, ignore_errors=True)


def tmp_dir_for(output_dir: str | Path, step: int) -> Path:
    """Where step ``step`` is assembled (the same path in every process)."""
    return checkpoints_dir(output_dir) / f"{TMP_PREFIX}step-{step}"


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


def commit(tmp: Path, state: TrainState, keep: int) -> Path:
    """Write ``trainer_state.json`` into ``tmp``, flush everything, rename it to ``step-N`` and
    delete the oldest checkpoints beyond ``keep``. Call in one process only."""
    (tmp / STATE_FILE).write_text(state.to_json(), encoding="utf-8")
    _fsync_tree(tmp)
    final = tmp.parent / f"step-{state.global_step}"
    if final.exists():  # left by an earlier run resumed from an older checkpoint: replace it
        trash = tmp.parent / f"{TMP_PREFIX}old-{final.name}"
        shutil.rmtree(trash, ignore_errors=True)
        os.rename(final, trash)
        shutil.rmtree(trash, ignore_errors=True)
    os.rename(tmp, final)
    _fsync_dir(tmp.parent)
    if keep > 0:
        for old in list_checkpoints(tmp.parent.parent)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """Every RNG the loop draws from, in a form ``torch.load(weights_only=True)`` accepts."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_rng(folder: Path, rank: int) -> None:
    import torch

    torch.save(rng_state(), folder / f"rng_rank{rank}.pt")


def load_rng(folder: Path, rank: int) -> None:
    import torch

    path = folder / f"rng_rank{rank}.pt"
    if not path.exists():
        raise VichatError(f"{folder}: no RNG state for process {rank} (was it saved with another world size?)")
    set_rng_state(torch.load(path, weights_only=True))
