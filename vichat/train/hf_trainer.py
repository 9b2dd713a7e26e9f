"""What vichat adds to ``transformers.Trainer``: its batch plan, its loss, its log and atomic checkpoints.

- **Batches**: :class:`PlanBatchSampler` hands Trainer the micro-batches of :func:`vichat.train.data.epoch_steps`
  (length-grouped, or shuffled, or packed), already split per process. It subclasses transformers'
  ``BatchRebalanceSampler`` only so that Trainer treats it as a rank-aware batch sampler (passed
  as ``batch_sampler``, not re-sharded by accelerate). Where the last step of an epoch has fewer
  micro-batches than processes, a process gets a *dummy* micro-batch whose labels are all ``-100``
  (loss 0), so every process makes the same number of passes.
- **Loss**: the sum of response-token losses by ``--loss`` (:mod:`vichat.train.loss`), divided by
  the step's trained-token count over all micro-batches and processes (Trainer's
  ``num_items_in_batch``) and multiplied by the process count, because DeepSpeed/DDP *average*
  gradients over processes. So a step's gradient is that of the mean over every response token of
  the step: 2 processes x accumulation A = 1 process x accumulation 2A.
- **Log**: per step, the token-weighted loss, gradient norm, learning rate, useful tokens/s
  (:class:`VichatCallback` → :class:`vichat.train.progress.RunLogger`: tqdm bar with ETA,
  ``training_log.jsonl``, TensorBoard). Trainer's own progress bar and printer are removed.
- **Checkpoints**: Trainer's checkpoint (adapter, optimizer, scheduler, RNG of every process,
  ``trainer_state.json``; DeepSpeed state with frozen weights excluded) is written into a staging
  folder, ``vichat_state.json`` is added, and the folder is renamed to ``checkpoint-N`` (atomic):
  ``kill -9`` mid-save leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_pt_utils import BatchRebalanceSampler

from ..data.tokenize import IGNORE_INDEX
from . import checkpoint as ckpt
from .data import Step, epoch_steps, input_tokens, label_tokens
from .loss import batch_loss_sum
from .model import make_optimizer, make_scheduler, trainable_parameters
from .progress import LogWindow, RunLogger


class PlanDataset(torch.utils.data.Dataset):
    """The training units; index ``len + i`` is unit ``i`` with every label masked (a dummy pass)."""

    def __init__(self, units: Sequence[dict[str, Any]]) -> None:
        self.units = units

    def __len__(self) -> int:
        return len(self.units)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.units)
        if index < n:
            return self.units[index]
        unit = dict(self.units[index - n])
        unit["labels"] = [IGNORE_INDEX] * len(unit["labels"])
        return unit


class PlanBatchSampler(BatchRebalanceSampler):
    """This process's micro-batches of :func:`epoch_steps`, epoch by epoch (see the module docstring)."""

    def __init__(self, units: Sequence[dict[str, Any]], *, micro: int, accumulation: int, world: int, rank: int,
                 mode: str, seed: int) -> None:  # noqa: D107 - the parent's __init__ is not wanted
        self.units, self.micro, self.accumulation = units, micro, accumulation
        self.world, self.rank, self.mode, self.seed = world, rank, mode, seed
        self.epoch = 0
        self._cache: dict[int, list[Step]] = {}

    def steps(self, epoch: int) -> list[Step]:
        """The optimizer steps of ``epoch`` (all processes' micro-batches)."""
        if epoch not in self._cache:
            self._cache = {epoch: epoch_steps(self.units, micro=self.micro, accumulation=self.accumulation,
                                              world=self.world, mode=self.mode, seed=self.seed, epoch=epoch)}
        return self._cache[epoch]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        n = len(self.units)
        for step in self.steps(self.epoch):
            for batch in step.for_rank(self.rank, self.world):
                yield list(batch) if batch is not None else [n + i for i in step.micro_batches[0]]

    def __len__(self) -> int:
        return sum(len(s.for_rank(self.rank, self.world)) for s in self.steps(0))


class VichatTrainer(Trainer):
    """``transformers.Trainer`` with vichat's batch plan, loss, schedule, evaluation and checkpoints."""

    def __init__(self, *args: Any, run: Any, **kwargs: Any) -> None:
        self.run = run  # the TrainingRun: config, plan, validation examples, logger, state
        super().__init__(*args, **kwargs)
        # Our compute_loss divides by the step's token count itself: make Trainer count the tokens
        # (over labels[..., 1:], all micro-batches of the step, all processes) and not rescale.
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True
        self.loss_is_scaled_for_ga = True
        self.plan_sampler: PlanBatchSampler | None = None
        self._local_loss = 0.0
        self._grad_norm: float | None = None

    # ------------------------------------------------------------------ optimizer and schedule

    def create_optimizer(self, model: Any = None) -> Any:
        if self.optimizer is None:
            self.optimizer = make_optimizer(self.run.cfg, trainable_parameters(self.model))
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        if self.lr_scheduler is None:
            self.lr_scheduler = make_scheduler(optimizer or self.optimizer, self.run.cfg, num_training_steps)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    # ------------------------------------------------------------------ data

    def _get_train_sampler(self, train_dataset: Any = None) -> PlanBatchSampler:
        r = self.run
        self.plan_sampler = PlanBatchSampler(r.units, micro=r.batch.micro, accumulation=r.batch.accumulation,
                                             world=r.world, rank=r.rank, mode=r.mode, seed=r.cfg.seed)
        return self.plan_sampler

    def _run_epoch(self, model: Any, epoch: int, *args: Any, **kwargs: Any) -> Any:
        # accelerate's skip_first_batches (resume mid-epoch) hides the sampler from Trainer's set_epoch.
        if self.plan_sampler is not None:
            self.plan_sampler.set_epoch(epoch)
        return super()._run_epoch(model, epoch, *args, **kwargs)

    # ------------------------------------------------------------------ loss

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        loss_sum = batch_loss_sum(model, inputs, self.run.loss, unwrapped=self.model)
        self._local_loss += float(loss_sum.detach())
        denominator = num_items_in_batch if num_items_in_batch is not None else \
            max(1, int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum()))
        loss = loss_sum / denominator
        if self.args.world_size > 1:
            loss = loss * self.args.world_size  # DeepSpeed / DDP average the gradients over processes
        return (loss, None) if return_outputs else loss

    def _get_grad_norm(self, model: Any, grad_norm: Any = None) -> Any:
        norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._grad_norm = None if norm is None else float(norm)
        return norm

    def take_step_loss(self) -> float:
        """The summed token loss of the step just done, all processes together (then reset)."""
        total = self.run.all_sum([self._local_loss])[0]
        self._local_loss = 0.0
        return total

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict:
        """Mean loss per response token over the validation set (all processes together)."""
        r = self.run
        model = self.model_wrapped
        model.eval()
        loss_sum, tokens = 0.0, 0
        batches = r.val_batches
        with torch.no_grad():
            for i in range(math.ceil(len(batches) / r.world)):
                j = i * r.world + r.rank
                real = j < len(batches)
                indices = batches[j if real else 0]  # dummy pass: ZeRO-3 needs matching forwards
                inputs = self._prepare_inputs(self.data_collator([r.val_examples[k] for k in indices]))
                value = batch_loss_sum(model, inputs, r.loss, unwrapped=self.model)
                if real:
                    loss_sum += float(value)
                    tokens += sum(label_tokens(r.val_examples[k]) for k in indices)
        model.train()
        loss_sum, tokens = r.all_sum([loss_sum, float(tokens)])
        metrics = {f"{metric_key_prefix}_loss": loss_sum / max(1.0, tokens)}
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def _staging(self) -> Path:
        return Path(self.args.output_dir) / ckpt.STAGING

    def _get_output_dir(self, trial: Any) -> str:
        return str(self._staging()) if getattr(self, "_saving", False) else super()._get_output_dir(trial)

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """Trainer's checkpoint, assembled in a staging folder and renamed into place (atomic)."""
        r = self.run
        step = self.state.global_step
        staging = self._staging()
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        r.barrier()
        self._saving = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._saving = False
        r.barrier()
        if self.args.should_save:
            ckpt.commit(staging / f"checkpoint-{step}", r.checkpoint_state(step), self.args.save_total_limit)
        r.barrier()


def gpu_peak_gib() -> float | None:
    """This process's peak allocated GPU memory since it started, in GiB (``None`` without CUDA): what the
    memory plan predicts (the CUDA context and the caching allocator's spare blocks are not in it)."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 3)


class VichatCallback(TrainerCallback):
    """Per-step accounting and logging (every process takes part in the sums; rank 0 writes)."""

    def __init__(self, trainer: VichatTrainer, logger: RunLogger, window: LogWindow) -> None:
        self.trainer, self.logger, self.window = trainer, logger, window
        self._started = 0.0
        self._lr = 0.0

    def on_step_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - Trainer's callback signature
        self._started = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):  # noqa: ANN001
        self._lr = float(self.trainer.optimizer.param_groups[0]["lr"])  # the rate this update used

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        t, r = self.trainer, self.trainer.run
        seconds = time.perf_counter() - self._started
        spe = r.steps_per_epoch
        step: Step = t.plan_sampler.steps((state.global_step - 1) // spe)[(state.global_step - 1) % spe]
        loss = t.take_step_loss() / max(1, step.label_tokens)
        st = r.state
        st.global_step = state.global_step
        st.tokens_seen += step.input_tokens
        st.train_seconds += seconds
        self.window.add(loss, step.label_tokens, step.input_tokens, seconds, t._grad_norm)
        self.logger.step_done(step.input_tokens, loss)
        last = state.global_step >= state.max_steps
        if state.global_step % r.cfg.logging_steps == 0 or last:
            entry = {"step": state.global_step, "epoch": round(state.global_step / spe, 4), **self.window.entry(),
                     "lr": self._lr, "tokens": st.tokens_seen, "elapsed_s": round(st.train_seconds, 3)}
            peak = gpu_peak_gib()
            if peak is not None:
                entry["gpu_peak_gib"] = peak
            st.log.append(entry)
            self.logger.log(entry)
            if not r.show_bar:
                self.logger.say(f"step {state.global_step}/{state.max_steps}  loss {entry['loss']:.4f}  "
                                f"lr {self._lr:.3g}  {entry['tokens_per_s']:,.0f} tok/s"
                                + (f"  GPU peak {peak:.2f} GiB" if peak is not None else ""))
            self.window = LogWindow()
        st.window = dict(self.window.__dict__)
        control.should_log = False  # Trainer's own loss line is replaced by the entry above
        control.should_evaluate = bool(r.val_batches) and (state.global_step % r.cfg.eval_steps == 0 or last)
        control.should_save = state.global_step % r.cfg.save_steps == 0 or last
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001
        r = self.trainer.run
        val = metrics["eval_loss"]
        entry = {"step": state.global_step, "epoch": round(state.global_step / r.steps_per_epoch, 4), "val_loss": val}
        r.state.log.append(entry)
        self.logger.log(entry)
        self.logger.say(f"step {state.global_step}: validation loss {val:.4f}")


__all__ = ["PlanBatchSampler", "PlanDataset", "VichatCallback", "VichatTrainer", "input_tokens"]
