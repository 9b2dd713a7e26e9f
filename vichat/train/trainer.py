"""The LoRA training loop: ``run(cfg) -> TrainResult``.

One readable loop in the spirit of alpaca-lora's ``finetune.py``, without its pitfalls: the loss
is on the response only and every sequence ends in EOS (:mod:`vichat.data.tokenize`), batches are
length-grouped (or packed where the architecture keeps packed samples apart), and a resumed run
continues from the checkpoint's weights, optimizer, schedule, RNG and data position.

One process: a plain torch loop (AdamW, warm-up/decay schedule, gradient accumulation, clipping,
autocast on GPUs). Several processes (``WORLD_SIZE > 1``, from torchrun or the deepspeed launcher):
the same loop around a DeepSpeed engine configured from train_ds.json (ZeRO-2 by default); each
process takes its share of every step's micro-batches.

The loss of an optimizer step is the mean over *every response token of the step* (all its
micro-batches, all processes): each micro-batch contributes ``sum of token losses / step tokens``.
Averaging per micro-batch instead (what a per-batch ``.loss`` gives) would weigh a token of a
short batch more than one of a long batch, and would make the result depend on how the step was
split into micro-batches and processes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..records import VichatError
from . import checkpoint as ckpt
from .adapter import base_reference, expected_shapes, save_adapter
from .batch import Batch, solve_batch
from .card import LOSS_CURVE, model_card, plot_loss_curve
from .config import TrainConfig, resolve
from .data import (TrainingData, epoch_steps, ensure_prepared, eval_batches, label_tokens, load_prepared,
                   make_units, plan_fingerprint, steps_per_epoch, tokenize_all)
from .distributed import DistEnv, deepspeed_config, device_for, init_distributed, make_engine
from .model import (add_lora, forward_logits, load_base, make_optimizer, make_scheduler, token_loss_sum,
                    total_parameter_count, trainable_parameter_count, trainable_parameters)
from .progress import LogWindow, RunLogger
from .validate import validate_config

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
    log: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("log")
        return d


def run(cfg: TrainConfig, *, registry: Any = None, show_progress: bool | None = None) -> TrainResult:
    """Train a LoRA adapter as ``cfg`` says and leave it in ``cfg.output_dir`` (see docs/training.md).

    ``cfg`` may still hold ``auto`` values; they are settled here for this machine. Runs in every
    process of a multi-process launch. ``show_progress``: the tqdm bar (default: when stderr is a
    terminal; otherwise one line per logging step)."""
    if registry is None:
        from ..plugins import get_registry

        registry = get_registry()
    return Trainer(cfg, registry=registry, show_progress=show_progress).train()


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


def _seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Builds everything a run needs, then :meth:`train` runs it. One instance per process."""

    def __init__(self, cfg: TrainConfig, *, registry: Any, show_progress: bool | None = None) -> None:
        import torch

        self.wall_start = time.perf_counter()
        self.wall_before = 0.0  # wall time of earlier sessions (set on resume)
        self.spec = registry.base_model(cfg.base_model)
        cfg = resolve(cfg, self.spec, cuda=torch.cuda.is_available())
        self.warnings = validate_config(cfg, self.spec)
        self.env: DistEnv = init_distributed(cfg.device)
        self.batch = _batch_for(cfg, self.spec, self.env.world)
        self.cfg = cfg = replace(cfg, micro_batch_size=self.batch.micro, gradient_accumulation=self.batch.accumulation)
        self.device = device_for(cfg.device, self.env)
        self.out = Path(cfg.output_dir)
        self.show_progress = show_progress
        self.base_ref = base_reference(cfg.model_path, self.spec.hub_id)
        self.template = registry.template(cfg.template)

        self.resume_from = self._find_resume()
        self.data = self._load_data()
        _seed_everything(cfg.seed)
        model, self.tokenizer = load_base(cfg, self.spec, self.device)
        self.total_params = total_parameter_count(model)
        self.model = add_lora(model, cfg, cfg.lora_targets or self.spec.lora_targets)
        if cfg.load_in == "none":  # quantised weights were placed at load time (device_map)
            self.model.to(self.device)
        self.trainable_params = trainable_parameter_count(self.model)
        self.expected_adapter = expected_shapes(self.model)

        from ..data.tokenize import DataCollatorForSFT

        self.collate = DataCollatorForSFT(self.tokenizer)
        self.mode = self._batching_mode()
        self.train_examples = tokenize_all(self.data.train, self.tokenizer, self.template, cfg.max_length)
        self.val_examples = tokenize_all(self.data.validation, self.tokenizer, self.template, cfg.max_length)
        self.units = make_units(self.train_examples, self.mode, cfg.max_length)
        self.val_batches = eval_batches(self.val_examples, self.batch.micro)
        self.steps_per_epoch = steps_per_epoch(len(self.units), self.batch.micro, self.batch.accumulation,
                                               self.env.world)
        self.total_steps = max(1, math.ceil(cfg.epochs * self.steps_per_epoch))
        self._epoch_cache: dict[int, list] = {}

        self.optimizer = make_optimizer(cfg, trainable_parameters(self.model))
        self.scheduler = make_scheduler(self.optimizer, cfg, self.total_steps)
        self.engine = self._make_engine() if self.env.distributed else None
        self.forward_model = self.engine if self.engine is not None else self.model
        self.autocast, self.scaler = self._precision()

        self.plan = self._plan_values()
        self.state = ckpt.TrainState(seed=cfg.seed, fingerprint=plan_fingerprint(self.plan), plan=self.plan,
                                     total_steps=self.total_steps, world_size=self.env.world)
        # Dropout draws differ per process (same seed everywhere would repeat the same masks).
        torch.manual_seed(cfg.seed + self.env.rank)
        if self.resume_from is not None:
            self._resume(self.resume_from)

    # ------------------------------------------------------------------ setup helpers

    def _find_resume(self) -> Path | None:
        found = ckpt.find_resume_checkpoint(self.cfg.resume, self.out)
        if found is None and not self.cfg.resume:
            existing = ckpt.list_checkpoints(self.out)
            if existing:
                raise VichatError(
                    f"{self.out} already holds checkpoints of a run (latest {existing[-1].name}): pass --resume auto to "
                    "continue it, or choose another --output-dir (or delete that folder) to start over"
                )
        if self.env.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            ckpt.remove_partial(self.out)
        self.env.barrier()
        return found

    def _load_data(self) -> TrainingData:
        # One process builds the prepared folder (when --data names a mixture or dataset); the
        # others wait and read it.
        if self.env.is_main:
            folder = ensure_prepared(self.cfg.data, self.out, seed=self.cfg.seed, template=self.cfg.template)
        self.env.barrier()
        if not self.env.is_main:
            folder = ensure_prepared(self.cfg.data, self.out, seed=self.cfg.seed, template=self.cfg.template)
        return load_prepared(folder)

    def _batching_mode(self) -> str:
        if self.cfg.packing:
            if "bloom" in (getattr(self.model.config, "model_type", None), self.spec.architecture.family):
                raise VichatError(
                    f"--packing is refused for {self.spec.name} (BLOOM): BLOOM's ALiBi attention ignores position_ids, so "
                    "packed samples would attend to each other. Use --group-by-length instead (about as little padding)"
                )
            return "packed"
        return "length" if self.cfg.group_by_length else "random"

    def _make_engine(self) -> Any:
        from .ds_config import fill_deepspeed_config

        # Filled for the configured device count, then adjusted to this run (see deepspeed_config).
        filled = fill_deepspeed_config(
            self.cfg.deepspeed_config, replace(self.cfg, gradient_accumulation=None), spec=self.spec,
            n_train_records=len(self.data.train), total_steps=self.total_steps, client_optimizer=True,
        )
        ds = deepspeed_config(filled, micro=self.batch.micro, accumulation=self.batch.accumulation,
                              world=self.env.world, optimizer_is_torch=self.cfg.optimizer.startswith("adamw_torch"))
        return make_engine(self.model, self.optimizer, self.scheduler, ds)

    def _precision(self) -> tuple[Any, Any]:
        """Autocast and loss scaling for a one-process GPU run (DeepSpeed does its own)."""
        import torch

        if self.engine is not None or not self.device.startswith("cuda") or self.cfg.compute_dtype == "fp32":
            return contextlib.nullcontext, None
        dtype = torch.float16 if self.cfg.compute_dtype == "fp16" else torch.bfloat16
        scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
        return (lambda: torch.autocast("cuda", dtype=dtype)), scaler

    def _plan_values(self) -> dict[str, Any]:
        """Everything that decides the trajectory; a resumed run must match it exactly."""
        c = self.cfg
        return {
            "data": self.data.manifest_sha256 or self.data.describe()["train_sha256"] or str(len(self.data.train)),
            "base": self.base_ref, "template": c.template, "max_length": c.max_length, "mode": self.mode,
            "micro": self.batch.micro, "accumulation": self.batch.accumulation, "world": self.env.world,
            "seed": c.seed, "lora": [c.lora_r, c.lora_alpha, c.lora_dropout, sorted(c.lora_targets or ())],
            "optimizer": [c.optimizer, c.learning_rate, c.weight_decay, c.adam_beta1, c.adam_beta2, c.adam_epsilon],
            "schedule": [c.lr_scheduler, c.warmup_steps, self.total_steps], "load_in": c.load_in,
        }

    def _resume(self, folder: Path) -> None:
        import torch

        state = ckpt.read_state(folder)
        assert state is not None  # find_resume_checkpoint only returns complete checkpoints
        if state.fingerprint != self.state.fingerprint:
            diff = [k for k in self.plan if state.plan.get(k) != self.plan[k]]
            raise VichatError(
                f"--resume {folder}: the checkpoint was made with other settings or data"
                + (f" ({', '.join(diff)} differ)" if diff else "")
                + "; resume with the original settings, or start a new run in another --output-dir"
            )
        if self.engine is not None:
            path, _ = self.engine.load_checkpoint(str(folder), tag="deepspeed", load_module_strict=False,
                                                  load_optimizer_states=True, load_lr_scheduler_states=True)
            if path is None:
                raise VichatError(f"{folder}: DeepSpeed could not load its state from {folder / 'deepspeed'}")
        else:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(self.model, load_file(str(folder / "adapter_model.safetensors"), device=self.device))
            self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True, map_location=self.device))
            self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
            if self.scaler is not None and (folder / "scaler.pt").exists():
                self.scaler.load_state_dict(torch.load(folder / "scaler.pt", weights_only=True))
        ckpt.load_rng(folder, self.env.rank)
        self.state = state
        self.wall_before = state.wall_seconds

    # ------------------------------------------------------------------ the loop

    def _epoch_plan(self, epoch: int) -> list:
        if epoch not in self._epoch_cache:
            self._epoch_cache = {epoch: epoch_steps(
                self.units, micro=self.batch.micro, accumulation=self.batch.accumulation, world=self.env.world,
                mode=self.mode, seed=self.cfg.seed, epoch=epoch)}
        return self._epoch_cache[epoch]

    def train(self) -> TrainResult:
        """Run the remaining optimizer steps, then save the adapter, card and curve."""
        st = self.state
        self.show_bar = self.show_progress if self.show_progress is not None else os.isatty(2)
        self.logger = RunLogger(self.out, enabled=self.env.is_main, total_steps=self.total_steps,
                                initial_step=st.global_step, history=st.log, show_bar=self.show_bar)
        self._announce()
        window = LogWindow(**st.window)  # a resumed run continues the checkpoint's unlogged steps
        self.model.train()
        try:
            while st.global_step < self.total_steps:
                steps = self._epoch_plan(st.epoch)
                for index in range(st.step_in_epoch, len(steps)):
                    if st.global_step >= self.total_steps:
                        break
                    step = steps[index]
                    started = time.perf_counter()
                    loss, grad_norm, lr = self._train_step(step)
                    seconds = time.perf_counter() - started
                    # The position is the *next* step to run: what a checkpoint written now resumes at.
                    st.global_step += 1
                    st.step_in_epoch = index + 1
                    if st.step_in_epoch == len(steps):
                        st.epoch, st.step_in_epoch = st.epoch + 1, 0
                    st.tokens_seen += step.input_tokens
                    st.train_seconds += seconds
                    window.add(loss, step.label_tokens, step.input_tokens, seconds, grad_norm)
                    self.logger.step_done(step.input_tokens, loss)
                    if self._after_step(window, lr):
                        window = LogWindow()
        finally:
            self.logger.close()
        return self._finish()

    def _train_step(self, step: Any) -> tuple[float, float | None, float]:
        """Forward/backward over this process's micro-batches of ``step``, then one optimizer step.

        Returns the step's mean loss per response token (all processes), the gradient norm before
        clipping, and the learning rate the update used."""
        import torch

        world = self.env.world
        lr = float(self.optimizer.param_groups[0]["lr"])
        local_sum = 0.0
        for micro_batch in step.for_rank(self.env.rank, world):
            weight = 0.0 if micro_batch is None else 1.0  # a dummy pass keeps the processes in step
            batch = self._collate(micro_batch or step.micro_batches[0])
            with self.autocast():
                logits = forward_logits(self.forward_model, batch)
            loss_sum = token_loss_sum(logits, batch["labels"])
            # DeepSpeed averages gradients over processes, hence the factor ``world``.
            scaled = loss_sum * (weight * world / max(1, step.label_tokens))
            if self.engine is not None:
                self.engine.backward(scaled, scale_wrt_gas=False)
            elif self.scaler is not None:
                self.scaler.scale(scaled).backward()
            else:
                scaled.backward()
            local_sum += weight * float(loss_sum.detach())
            del logits, loss_sum, scaled

        if self.engine is not None:
            self.engine.step()  # unmanaged accumulation: every call is an optimizer step
            norm = self.engine.get_global_grad_norm()
            grad_norm = float(norm) if norm is not None else None
        else:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm))
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
        (total,) = self.env.sum([local_sum])
        return total / max(1, step.label_tokens), grad_norm, lr

    def _collate(self, indices: tuple[int, ...], examples: list | None = None) -> dict[str, Any]:
        source = self.units if examples is None else examples
        batch = self.collate([source[i] for i in indices])
        return {k: v.to(self.device) for k, v in batch.items()}

    def _after_step(self, window: LogWindow, lr: float) -> bool:
        """Log, evaluate and checkpoint as the step counts say; True when ``window`` was logged."""
        st, cfg = self.state, self.cfg
        last = st.global_step >= self.total_steps
        epoch = round(st.global_step / self.steps_per_epoch, 4)
        logged = st.global_step % cfg.logging_steps == 0 or last
        if logged:
            entry = {"step": st.global_step, "epoch": epoch, **window.entry(), "lr": lr, "tokens": st.tokens_seen,
                     "elapsed_s": round(st.train_seconds, 3)}
            st.log.append(entry)
            self.logger.log(entry)
            if not self.show_bar:
                self.logger.say(f"step {st.global_step}/{self.total_steps}  loss {entry['loss']:.4f}  "
                                f"lr {lr:.3g}  {entry['tokens_per_s']:,.0f} tok/s")
        if self.val_batches and (st.global_step % cfg.eval_steps == 0 or last):
            val = self.evaluate()
            entry = {"step": st.global_step, "epoch": epoch, "val_loss": val}
            st.log.append(entry)
            self.logger.log(entry)
            self.logger.say(f"step {st.global_step}: validation loss {val:.4f}")
        if st.global_step % cfg.save_steps == 0 or last:
            st.window = {} if logged else asdict(window)
            st.wall_seconds = self._wall_seconds()
            self.save_checkpoint()
        return logged

    def evaluate(self) -> float:
        """Mean loss per response token over validation.jsonl (all processes together)."""
        import torch

        self.model.eval()
        world, rank = self.env.world, self.env.rank
        loss_sum, tokens = 0.0, 0
        with torch.no_grad():
            for r in range(math.ceil(len(self.val_batches) / world)):
                j = r * world + rank
                real = j < len(self.val_batches)
                indices = self.val_batches[j if real else 0]  # dummy pass: ZeRO-3 needs matching forwards
                batch = self._collate(indices, self.val_examples)
                with self.autocast():
                    logits = forward_logits(self.forward_model, batch)
                if real:
                    loss_sum += float(token_loss_sum(logits, batch["labels"]))
                    tokens += sum(label_tokens(self.val_examples[i]) for i in indices)
        self.model.train()
        loss_sum, tokens = self.env.sum([loss_sum, float(tokens)])
        return loss_sum / max(1.0, tokens)

    # ------------------------------------------------------------------ saving

    def _adapter_state_dict(self) -> Any:
        """Under ZeRO-3 the LoRA weights are partitioned: gather them (peft #2892). Else None."""
        if self.engine is None or self.cfg.zero_stage != 3:
            return None
        import deepspeed
        from peft import get_peft_model_state_dict

        params = trainable_parameters(self.model)
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            state = get_peft_model_state_dict(self.model)
            return {k: v.detach().clone().cpu() for k, v in state.items()} if self.env.is_main else None

    def _save_adapter(self, folder: Path) -> dict[str, Any] | None:
        state_dict = self._adapter_state_dict()
        if not self.env.is_main:
            return None
        return save_adapter(
            self.model, folder, base_model_name_or_path=self.base_ref, expected=self.expected_adapter,
            steps_done=self.state.global_step, state_dict=state_dict, run_info=self._run_info(),
        )

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-N`` atomically (see :mod:`vichat.train.checkpoint`)."""
        import torch

        tmp = ckpt.tmp_dir_for(self.out, self.state.global_step)
        if self.env.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.env.barrier()
        if self.engine is not None:
            # Frozen base weights are excluded: a checkpoint holds the LoRA state only.
            self.engine.save_checkpoint(str(tmp), tag="deepspeed", save_latest=False, exclude_frozen_parameters=True)
        else:
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), tmp / "scheduler.pt")
            if self.scaler is not None:
                torch.save(self.scaler.state_dict(), tmp / "scaler.pt")
        ckpt.save_rng(tmp, self.env.rank)
        self._save_adapter(tmp)
        self.env.barrier()
        final = tmp.parent / f"step-{self.state.global_step}"
        if self.env.is_main:
            final = ckpt.commit(tmp, self.state, self.cfg.save_total_limit)
        self.env.barrier()
        return final

    def _wall_seconds(self) -> float:
        """Wall time of the kept work: earlier sessions up to the resumed checkpoint, plus this one."""
        return self.wall_before + time.perf_counter() - self.wall_start

    def _run_info(self) -> dict[str, Any]:
        return {"base_model": self.spec.name, "base_model_name_or_path": self.base_ref, "load_in": self.cfg.load_in,
                "compute_dtype": self.cfg.compute_dtype, "template": self.cfg.template, "max_length": self.cfg.max_length,
                "global_step": self.state.global_step, "config": self.cfg.to_dict()}

    def _announce(self) -> None:
        c, b = self.cfg, self.batch
        for w in self.warnings:
            self.logger.say(f"warning: {w}")
        where = f"resuming from {self.resume_from} at step {self.state.global_step}" if self.resume_from else "starting"
        self.logger.say(
            f"{where}: {self.spec.name} ({self.base_ref}), LoRA r={c.lora_r} on {', '.join(c.lora_targets or ())}: "
            f"{self.trainable_params:,} trainable of {self.total_params:,}; {len(self.data.train)} training / "
            f"{len(self.data.validation)} validation records; batch {b.total} = {b.micro} x {b.accumulation} x "
            f"{b.world} process(es), {self.mode} batching; {self.total_steps} steps ({self.steps_per_epoch}/epoch)"
        )

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
            world_size=self.env.world, log=list(st.log),
        )
        summary = self._save_adapter(self.out)
        if self.env.is_main:
            self.tokenizer.save_pretrained(str(self.out))
            plot_loss_curve(st.log, self.out / LOSS_CURVE, title=f"{self.spec.name} LoRA ({self.cfg.template})")
            data = {**self.data.describe(), "truncated": sum(1 for e in self.train_examples if e.get("truncated"))}
            card = model_card(
                base_model=self.spec.name, base_ref=self.base_ref, config=self.cfg.to_dict(),
                batch={"total": self.batch.total, "micro": self.batch.micro, "accumulation": self.batch.accumulation,
                       "world": self.env.world, "mode": self.mode},
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
        self.env.barrier()
        return result


def _f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


__all__ = ["TrainResult", "Trainer", "run"]
