"""LoRA training on ``transformers.Trainer``: ``run(cfg) -> TrainResult``.

vichat settles the configuration (presets, YAML, flags, ``auto`` values, the batch split), loads the
base through its registry spec, tokenises with response-only labels and EOS
(:mod:`vichat.data.tokenize`), and hands everything to :class:`vichat.train.hf_trainer.VichatTrainer`,
a ``transformers.Trainer`` with vichat's length-grouped batch plan, memory-efficient loss
(``--loss``), token-weighted loss across accumulation and processes, log and atomic checkpoints.
One process: plain Trainer. Several (``WORLD_SIZE > 1``, from torchrun or the deepspeed launcher):
Trainer's DeepSpeed integration, given the filled train_ds.json as ``TrainingArguments(deepspeed=...)``.

After training: the adapter (read back and checked non-empty), the tokenizer, the loss curve, the
model card and ``train_result.json``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..records import VichatError
from . import checkpoint as ckpt
from .adapter import base_reference, expected_shapes, save_adapter
from .batch import Batch, solve_batch
from .card import LOSS_CURVE, model_card, plot_loss_curve
from .config import TrainConfig, resolve, training_arguments
from .data import (TrainingData, data_report, ensure_prepared, eval_batches, load_prepared, make_units,
                   plan_fingerprint, steps_per_epoch, tokenize_all)
from .loss import loss_notes, resolve_loss
from .model import add_lora, load_base, total_parameter_count, trainable_parameter_count, trainable_parameters
from .progress import LogWindow, RunLogger
from .validate import check_devices, validate_config

RESULT_FILE = "train_result.json"


@dataclass
class TrainResult:
    """What a finished run reports (also written to ``OUTPUT_DIR/train_result.json``)."""

    output_dir: str
    global_step: int
    total_steps: int
    epochs: float
    final_train_loss: float | None
    final_val_loss: float | None
    trainable_params: int
    total_params: int
    tokens_seen: int
    train_seconds: float
    wall_seconds: float
    tokens_per_second: float
    resumed_from: str | None
    batching: str
    world_size: int
    loss: str = "plain"
    log: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("log")
        return d


def run(cfg: TrainConfig, *, registry: Any, show_progress: bool | None = None) -> TrainResult:
    """Train a LoRA adapter as ``cfg`` says and leave it in ``cfg.output_dir`` (see docs/training.md).

    ``cfg`` may still hold ``auto`` values; they are settled here for this machine. Runs in every
    process of a multi-process launch. ``registry``: where ``cfg``'s names (base model, datasets,
    template) are looked up, the caller's (the CLI passes the plugin registry). ``show_progress``: the
    tqdm bar (default: when stderr is a terminal; otherwise one line per logging step)."""
    return TrainingRun(cfg, registry=registry, show_progress=show_progress).train()


def _world() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (1 process when unset)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _batch_for(cfg: TrainConfig, spec: Any, world: int) -> Batch:
    """The batch split for the real number of processes.

    The config's micro-batch and accumulation were worked out for its GPU count; a CPU run under
    torchrun (or a launcher with another count) has ``world`` processes: keep the micro-batch (it is
    what fits in memory) and recompute the accumulation."""
    micro, acc, total = cfg.micro_batch_size, cfg.gradient_accumulation, cfg.total_batch_size
    if micro and acc and micro * acc * world == total:
        return Batch(total, micro, acc, world)
    if micro:
        return solve_batch(total, world, micro=micro)
    if acc and not micro:
        return solve_batch(total, world, accumulation=acc)
    from .plan import plan

    # The planner's memory model gives the largest micro-batch that fits (no data needed for that).
    p = plan(replace(cfg, micro_batch_size=None, gradient_accumulation=None), spec, n_train_records=1,
             avg_tokens=float(cfg.max_length))
    return solve_batch(total, world, cap=max(1, p.max_micro_batch))


class TrainingRun:
    """Builds everything a run needs (one instance per process), then :meth:`train` runs it."""

    def __init__(self, cfg: TrainConfig, *, registry: Any, show_progress: bool | None = None) -> None:
        import torch

        self.wall_start = time.perf_counter()
        self.wall_before = 0.0  # wall time of earlier sessions (set on resume)
        self.registry = registry
        self.spec = registry.base_model(cfg.base_model)
        self.rank, self.world = _world()
        check_devices(cfg, cuda=torch.cuda.is_available(), torch_version=torch.__version__)
        cfg = resolve(cfg, self.spec, cuda=torch.cuda.is_available())
        self.warnings = validate_config(cfg, self.spec, world=self.world)
        self.loss = resolve_loss(cfg.loss, device=cfg.device, zero_stage=cfg.zero_stage, world=self.world)
        self.warnings += loss_notes(self.loss, cfg.device)
        self.batch = _batch_for(cfg, self.spec, self.world)
        self.cfg = cfg = replace(cfg, micro_batch_size=self.batch.micro, gradient_accumulation=self.batch.accumulation)
        self.out = Path(cfg.output_dir)
        self.show_progress = show_progress
        self.show_bar = show_progress if show_progress is not None else os.isatty(2)
        self.base_ref = base_reference(cfg.base_path, self.spec.hub_id)
        self.template = registry.template(cfg.template)
        self.mode = self._batching_mode()

        self.args = self._training_arguments()  # starts the process group of a multi-process run
        self.resume_from = self._find_resume()
        self.data: TrainingData | None = None
        self.total_steps: int | None = None
        # A refused resume must leave the run's folder as it was: the settings are checked before the
        # data folder is (re)built, the data before the weights load, the step count once it is known.
        self._check_resume()
        self.data = self._load_data()  # checks the data against the checkpoint's too
        self._seed(cfg.seed)
        device = f"cuda:{self.args.local_process_index}" if cfg.device == "cuda" else "cpu"
        model, self.tokenizer = load_base(cfg, self.spec, device)
        # What the adapter records and the run reports: the folder the weights really came from (the
        # tiny build's cache, say). base_ref, what was asked for, stays the resume check's key.
        self.loaded_ref = base_reference(cfg.base_path, self.spec.hub_id, model)
        self.total_params = total_parameter_count(model)
        self.model = add_lora(model, cfg, cfg.lora_targets or self.spec.lora_targets)
        self.trainable_params = trainable_parameter_count(self.model)
        self.expected_adapter = expected_shapes(self.model)

        from ..data.tokenize import DataCollatorForSFT

        self.collate = DataCollatorForSFT(self.tokenizer)
        self.train_examples = tokenize_all(self.data.train, self.tokenizer, self.template, cfg.max_length)
        self.val_examples = tokenize_all(self.data.validation, self.tokenizer, self.template, cfg.max_length)
        self.units = make_units(self.train_examples, self.mode, cfg.max_length)
        self.val_batches = eval_batches(self.val_examples, self.batch.micro)
        self.steps_per_epoch = steps_per_epoch(len(self.units), self.batch.micro, self.batch.accumulation, self.world)
        self.total_steps = max(1, math.ceil(cfg.epochs * self.steps_per_epoch))

        self.plan = self._plan_values()
        self.state = ckpt.TrainState(seed=cfg.seed, fingerprint=plan_fingerprint(self.plan), plan=self.plan,
                                     total_steps=self.total_steps, world_size=self.world)
        self._check_resume(final=True)

    # ------------------------------------------------------------------ setup helpers

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def uses_deepspeed(self) -> bool:
        """Several processes, or a GPU process started by a launcher (``deepspeed --num_gpus 1``, torchrun)."""
        return self.world > 1 or (self.cfg.device == "cuda" and "LOCAL_RANK" in os.environ)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over all processes (float64, so token counts stay exact)."""
        if self.world == 1:
            return list(values)
        import torch
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64)
        if dist.get_backend() == "nccl":
            t = t.cuda()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().tolist()

    def _collate(self, indices: Any, examples: list | None = None) -> dict[str, Any]:
        """A padded batch of ``examples`` (default: the training units) at ``indices``."""
        source = self.units if examples is None else examples
        return self.collate([source[i] for i in indices])

    @staticmethod
    def _seed(seed: int) -> None:
        from transformers import set_seed

        set_seed(seed)

    def _batching_mode(self) -> str:
        # --packing on BLOOM is refused by validate_config (the dry run refuses it too).
        if self.cfg.packing:
            return "packed"
        return "length" if self.cfg.group_by_length else "random"

    def _deepspeed(self) -> dict[str, Any] | None:
        """The filled train_ds.json for this run, or None for one process.

        The ``optimizer`` and ``scheduler`` blocks are dropped: Trainer builds vichat's AdamW and
        warm-up/decay schedule, so one-process and DeepSpeed runs follow the same schedule."""
        if not self.uses_deepspeed:
            return None
        from .ds_config import fill_deepspeed_config
        from .plan import plan

        p = plan(replace(self.cfg, gradient_accumulation=None), self.spec, n_train_records=1)
        ds = fill_deepspeed_config(self.cfg.deepspeed_config, p, self.spec, total_steps=1, client_optimizer=True)
        ds["train_micro_batch_size_per_gpu"] = self.batch.micro
        ds["gradient_accumulation_steps"] = self.batch.accumulation
        ds["train_batch_size"] = self.batch.micro * self.batch.accumulation * self.world
        ds["gradient_clipping"] = self.cfg.max_grad_norm
        ds["steps_per_print"] = 10**9  # vichat logs; DeepSpeed's own prints would interleave with the bar
        return ds

    def _training_arguments(self) -> Any:
        from transformers import TrainingArguments

        return TrainingArguments(**training_arguments(
            self.cfg, self.batch.micro, self.batch.accumulation, output_dir=str(ckpt.checkpoints_dir(self.out)),
            world=self.world, deepspeed=self._deepspeed()))

    def _find_resume(self) -> Path | None:
        found = ckpt.find_resume_checkpoint(self.cfg.resume, self.out)
        if found is None and not self.cfg.resume:
            existing = ckpt.list_checkpoints(self.out)
            if existing:
                raise VichatError(
                    f"{self.out} already holds checkpoints of a run (latest {existing[-1].name}): pass --resume auto to "
                    "continue it, or choose another --output-dir (or delete that folder) to start over"
                )
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            ckpt.remove_partial(self.out)
        self.barrier()
        return found

    def _load_data(self) -> TrainingData:
        # One process builds the prepared folder (when --data names a mixture or dataset); the
        # others wait and read it. A resumed run never rebuilds a folder prepared from other data.
        resuming = self.resume_from is not None
        created = resuming and not (self.out / "data").exists()
        try:
            if self.is_main:
                folder = ensure_prepared(self.cfg.data, self.out, seed=self.cfg.seed, template=self.cfg.template,
                                         registry=self.registry, resuming=resuming)
            self.barrier()
            if not self.is_main:
                folder = ensure_prepared(self.cfg.data, self.out, seed=self.cfg.seed, template=self.cfg.template,
                                         registry=self.registry, resuming=resuming)
            data = load_prepared(folder)
            self.data = data
            self._check_resume()
        except VichatError:
            if created and self.is_main:  # built for a resume that is refused: leave the folder as it was
                import shutil

                shutil.rmtree(self.out / "data", ignore_errors=True)
            raise
        return data

    #: The plan's entries (all that decides the trajectory) and how a user sets each, for the message
    #: that refuses a resume. The loss implementation (--loss), gradient checkpointing, logging,
    #: evaluation and saving do not change the math and may differ.
    PLAN_SETTINGS: dict[str, str] = {
        "data": "--data (the prepared records, manifest sha256)", "base": "--base-model / --base-path",
        "template": "--template", "max_length": "--max-length", "mode": "batching (--packing / --group-by-length)",
        "micro": "--micro-batch-size", "accumulation": "--gradient-accumulation",
        "world": "processes (--gpus x --num-nodes, or torchrun's --nproc_per_node)", "seed": "--seed",
        "lora_r": "--lora-r", "lora_alpha": "--lora-alpha", "lora_dropout": "--lora-dropout",
        "lora_targets": "--lora-targets", "optimizer": "--optimizer", "learning_rate": "--learning-rate",
        "weight_decay": "--weight-decay", "adam_beta1": "--adam-beta1", "adam_beta2": "--adam-beta2",
        "adam_epsilon": "--adam-epsilon", "max_grad_norm": "--max-grad-norm", "lr_scheduler": "--lr-scheduler",
        "warmup_steps": "--warmup-steps", "total_steps": "total steps (from --epochs, the batch and the data)",
        "load_in": "--load-in", "compute_dtype": "--compute-dtype", "zero_stage": "--zero-stage",
    }
    PLAN_FORMAT = 2

    def _plan_values(self) -> dict[str, Any]:
        """Everything that decides the trajectory; a resumed run must match it exactly. ``data`` and
        ``total_steps`` are None until the data is loaded and tokenised."""
        c, d = self.cfg, self.data
        data = (d.manifest_sha256 or d.describe()["train_sha256"] or str(len(d.train))) if d is not None else None
        return {
            "format": self.PLAN_FORMAT, "data": data, "base": self.base_ref, "template": c.template,
            "max_length": c.max_length, "mode": self.mode, "micro": self.batch.micro,
            "accumulation": self.batch.accumulation, "world": self.world, "seed": c.seed, "lora_r": c.lora_r,
            "lora_alpha": c.lora_alpha, "lora_dropout": c.lora_dropout, "lora_targets": sorted(c.lora_targets or ()),
            "optimizer": c.optimizer, "learning_rate": c.learning_rate, "weight_decay": c.weight_decay,
            "adam_beta1": c.adam_beta1, "adam_beta2": c.adam_beta2, "adam_epsilon": c.adam_epsilon,
            "max_grad_norm": c.max_grad_norm, "lr_scheduler": c.lr_scheduler, "warmup_steps": c.warmup_steps,
            "total_steps": self.total_steps, "load_in": c.load_in, "compute_dtype": c.compute_dtype,
            "zero_stage": c.zero_stage if self.uses_deepspeed else None,
        }

    def _legacy_plan(self) -> dict[str, Any]:
        """The plan as checkpoints before format 2 recorded it (grouped, without the clipping norm and dtype)."""
        c, p = self.cfg, self._plan_values()
        return {
            "data": p["data"], "base": self.base_ref, "template": c.template, "max_length": c.max_length,
            "mode": self.mode, "micro": self.batch.micro, "accumulation": self.batch.accumulation, "world": self.world,
            "seed": c.seed, "lora": [c.lora_r, c.lora_alpha, c.lora_dropout, sorted(c.lora_targets or ())],
            "optimizer": [c.optimizer, c.learning_rate, c.weight_decay, c.adam_beta1, c.adam_beta2, c.adam_epsilon],
            "schedule": [c.lr_scheduler, c.warmup_steps, self.total_steps], "load_in": c.load_in,
        }

    def _check_resume(self, final: bool = False) -> None:
        """Refuse resuming a checkpoint made with other settings, naming each one (old -> new value and
        its flag). Called as soon as each part of the plan is known (settings, data, step count), so a
        refusal comes before anything is written; ``final``: the whole plan, and adopt the state."""
        folder = self.resume_from
        if folder is None:
            return
        state = ckpt.read_state(folder)
        assert state is not None  # find_resume_checkpoint only returns complete checkpoints
        if state.plan.get("format") == self.PLAN_FORMAT:
            new = self._plan_values()
            diff = [k for k in self.PLAN_SETTINGS if k in state.plan and new.get(k) is not None
                    and state.plan[k] != new[k]]
            if not diff and final and state.fingerprint != plan_fingerprint(new):
                diff = [k for k in new if state.plan.get(k) != new[k]]
        elif final:  # a checkpoint of an older vichat: its grouped plan, compared as it was then
            legacy = self._legacy_plan()
            diff = [] if state.fingerprint == plan_fingerprint(legacy) else \
                [k for k in legacy if state.plan.get(k) != legacy[k]] or ["settings"]
        else:
            diff = []
        if diff:
            raise VichatError(
                f"--resume {folder}: the checkpoint was made with other settings: "
                + "; ".join(self._describe_change(k, state.plan.get(k)) for k in diff)
                + ". Resume with the checkpoint's settings, or start a new run in another --output-dir"
            )
        if final:
            self.state = state
            self.wall_before = state.wall_seconds

    def _describe_change(self, key: str, old: Any) -> str:
        new = self._plan_values().get(key) if key in self.PLAN_SETTINGS else self._legacy_plan().get(key)

        def show(v: Any) -> str:
            if key == "data" and isinstance(v, str) and len(v) > 16:
                return v[:12] + "…"
            if isinstance(v, list):
                return ",".join(map(str, v)) or "(none)"
            return "(not recorded)" if v is None else str(v)

        return f"{self.PLAN_SETTINGS.get(key, key)} {show(old)} -> {show(new)}"

    def checkpoint_state(self, step: int) -> ckpt.TrainState:
        """vichat's part of checkpoint ``step`` (called by the trainer while saving)."""
        self.state.global_step = step
        self.state.wall_seconds = self.wall_before + time.perf_counter() - self.wall_start
        return ckpt.TrainState(**{**asdict(self.state), "log": list(self.state.log)})

    # ------------------------------------------------------------------ the run

    def build_trainer(self) -> Any:
        """The :class:`VichatTrainer` for this run (with its logging callback)."""
        from transformers.trainer_callback import PrinterCallback, ProgressCallback

        from .hf_trainer import PlanDataset, VichatCallback, VichatTrainer

        trainer = VichatTrainer(model=self.model, args=self.args, train_dataset=PlanDataset(self.units),
                                data_collator=self.collate, processing_class=self.tokenizer, run=self)
        for cb in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(cb)
        self.logger = RunLogger(self.out, enabled=self.is_main, total_steps=self.total_steps,
                                initial_step=self.state.global_step, history=self.state.log, show_bar=self.show_bar)
        trainer.add_callback(VichatCallback(trainer, self.logger, LogWindow(**self.state.window)))
        return trainer

    def train(self) -> TrainResult:
        """Run the remaining optimizer steps, then save the adapter, card and curve."""
        if getattr(self, "trainer", None) is None:
            self.trainer = self.build_trainer()
        self._announce()
        if self.resume_from and self.total_steps is not None and self.state.global_step >= self.total_steps:
            # The checkpoint is the run's last step (a finished run resumed, or one stopped between its
            # last checkpoint and its final save). Trainer would run one more step here (it skips the
            # resumed epoch's done batches, then steps before checking max_steps): take the
            # checkpoint's weights as they are and save the run's outputs from them.
            self.logger.say(f"{self.resume_from.name} is the run's last step ({self.state.global_step} of "
                            f"{self.total_steps}): nothing left to train; saving its adapter")
            self.logger.close()
            self._load_checkpoint_adapter()
            return self._finish()
        try:
            self.trainer.train(resume_from_checkpoint=str(self.resume_from) if self.resume_from else None)
        finally:
            self.logger.close()
        return self._finish()

    def _load_checkpoint_adapter(self) -> None:
        """The LoRA weights of the checkpoint being resumed, into the model (gathered under ZeRO-3)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        path = Path(self.resume_from) / "adapter_model.safetensors"
        if not path.is_file():
            raise VichatError(f"--resume {self.resume_from}: no adapter_model.safetensors in the checkpoint: it is "
                              "not one this run wrote; resume from another checkpoint or start a new --output-dir")
        weights = load_file(str(path))
        if self.uses_deepspeed and self.cfg.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(trainable_parameters(self.model), modifier_rank=0):
                set_peft_model_state_dict(self.model, weights)
        else:
            set_peft_model_state_dict(self.model, weights)

    # ------------------------------------------------------------------ saving

    def _adapter_state_dict(self) -> Any:
        """Under ZeRO-3 the LoRA weights are partitioned: gather them (peft #2892). Else None."""
        if not self.uses_deepspeed or self.cfg.zero_stage != 3:
            return None
        import deepspeed
        from peft import get_peft_model_state_dict

        params = trainable_parameters(self.model)
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            state = get_peft_model_state_dict(self.model)
            return {k: v.detach().clone().cpu() for k, v in state.items()} if self.is_main else None

    def _wall_seconds(self) -> float:
        """Wall time of the kept work: earlier sessions up to the resumed checkpoint, plus this one."""
        return self.wall_before + time.perf_counter() - self.wall_start

    def _run_info(self) -> dict[str, Any]:
        return {"base_model": self.spec.name, "base_model_name_or_path": self.loaded_ref, "load_in": self.cfg.load_in,
                "compute_dtype": self.cfg.compute_dtype, "template": self.cfg.template, "max_length": self.cfg.max_length,
                "global_step": self.state.global_step, "config": self.cfg.to_dict()}

    def _announce(self) -> None:
        c, b = self.cfg, self.batch
        for w in self.warnings:
            self.logger.say(f"warning: {w}")
        where = f"resuming from {self.resume_from} at step {self.state.global_step}" if self.resume_from else "starting"
        self.logger.say(
            f"{where}: {self.spec.name} ({self.loaded_ref}), LoRA r={c.lora_r} on {', '.join(c.lora_targets or ())}: "
            f"{self.trainable_params:,} trainable of {self.total_params:,}; {len(self.data.train)} training / "
            f"{len(self.data.validation)} validation records; batch {b.total} = {b.micro} x {b.accumulation} x "
            f"{b.world} process(es), {self.mode} batching, {self.loss} loss; {self.total_steps} steps "
            f"({self.steps_per_epoch}/epoch)"
        )
        notes, warnings = data_report(self.data, self.train_examples, c.max_length)
        for note in notes:
            self.logger.say(note)
        for w in warnings:
            self.logger.say(f"warning: {w}")

    def _finish(self) -> TrainResult:
        """Save the final adapter, tokenizer, loss curve, model card and result (main process)."""
        st = self.state
        train_losses = [e["loss"] for e in st.log if "loss" in e]
        val_losses = [e["val_loss"] for e in st.log if e.get("val_loss") is not None]
        result = TrainResult(
            output_dir=str(self.out), global_step=st.global_step, total_steps=self.total_steps,
            epochs=round(st.global_step / self.steps_per_epoch, 4),
            final_train_loss=train_losses[-1] if train_losses else None,
            final_val_loss=val_losses[-1] if val_losses else None,
            trainable_params=self.trainable_params, total_params=self.total_params, tokens_seen=st.tokens_seen,
            train_seconds=round(st.train_seconds, 3), wall_seconds=round(self._wall_seconds(), 3),
            tokens_per_second=st.tokens_seen / st.train_seconds if st.train_seconds else 0.0,
            resumed_from=str(self.resume_from) if self.resume_from else None, batching=self.mode,
            world_size=self.world, loss=self.loss, log=list(st.log),
        )
        state_dict = self._adapter_state_dict()
        if self.is_main:
            summary = save_adapter(
                self.model, self.out, base_model_name_or_path=self.loaded_ref, expected=self.expected_adapter,
                steps_done=st.global_step, state_dict=state_dict, run_info=self._run_info(),
            )
            self.tokenizer.save_pretrained(str(self.out))
            plot_loss_curve(st.log, self.out / LOSS_CURVE, title=f"{self.spec.name} LoRA ({self.cfg.template})")
            data = {**self.data.describe(), "truncated": sum(1 for e in self.train_examples if e.get("truncated"))}
            card = model_card(
                base_model=self.spec.name, base_ref=self.loaded_ref, config=self.cfg.to_dict(),
                batch={"total": self.batch.total, "micro": self.batch.micro, "accumulation": self.batch.accumulation,
                       "world": self.world, "mode": self.mode},
                data=data, results=result.to_dict(), lora_targets=list(self.cfg.lora_targets or ()),
                trainable_params=self.trainable_params, total_params=self.total_params, license=self.spec.license,
            )
            (self.out / "README.md").write_text(card, encoding="utf-8")
            (self.out / RESULT_FILE).write_text(
                json.dumps({**result.to_dict(), "adapter": summary}, ensure_ascii=False, indent=2), encoding="utf-8")
            self.logger.say(
                f"done: adapter in {self.out} ({self.trainable_params:,} parameters); train loss "
                f"{_f(result.final_train_loss)}, validation loss {_f(result.final_val_loss)}; "
                f"{result.tokens_per_second:,.0f} tokens/s"
            )
        self.barrier()
        return result


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


#: The former name of :class:`TrainingRun` (it is not a ``transformers.Trainer``).
Trainer = TrainingRun

__all__ = ["TrainResult", "TrainingRun", "Trainer", "run"]
