"""The training loop: DALI batches -> model -> DeepSpeed, with evaluation, checkpoints and MLflow.

One ``Trainer`` per rank. ``Trainer.run`` builds the components (vigsp/train/setup.py), restores
them from the checkpoint being resumed, and then reads top to bottom: epochs of optimizer steps,
a log every ``run.log_every`` steps, a checkpoint every ``checkpoint.every_n_steps``, evaluation
at an epoch's end, and a checkpointed stop when the scheduler asks for one.

Every rank runs the same sequence of collectives: the per-step stop vote, the logging all-reduce,
checkpoint saves and evaluation, so no rank can leave the loop alone. Steps are *optimizer*
steps; with gradient accumulation one step takes ``deepspeed.gradient_accumulation_steps`` micro
batches, and checkpoints only fall on step boundaries, where nothing is half-accumulated.
Losses stay on the device until a log step (vigsp/train/meters.py).
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from vigsp.config.schema import TrainConfig
from vigsp.data.loader import Batch
from vigsp.tracking import RunEnd, names
from vigsp.train import artifacts
from vigsp.train.distributed import DistEnv, all_reduce_sum, any_rank
from vigsp.train.evaluate import evaluate
from vigsp.train.lease import RunLease
from vigsp.train.norm_sync import average_running_statistics
from vigsp.train.outcome import TrainOutcome
from vigsp.train.progress import Progress
from vigsp.train.setup import build_components
from vigsp.train.signals import StopFlag

log = logging.getLogger("vigsp.train")

__all__ = ["Trainer"]


class Trainer:
    def __init__(
        self, cfg: TrainConfig, env: DistEnv, tracking_uri: str | None = None, lease: RunLease | None = None
    ) -> None:
        self.cfg = cfg
        self.lease = lease  # rank 0's hold on the run directory (vigsp/train/lease.py)
        self.env = env
        self.tracking_uri = tracking_uri or cfg.tracking.tracking_uri
        self.accum = cfg.deepspeed.gradient_accumulation_steps
        self.images_per_step = cfg.data.batch_size * self.accum
        self.dtype = torch.bfloat16 if cfg.deepspeed.bf16 else torch.float32
        self.lr = 0.0  # the learning rate of the step being trained
        self.step_samples: list[int] = []  # training-split indices of the step being trained

    # ---- the run -------------------------------------------------------------------------------

    def run(self) -> TrainOutcome:
        c = self.c = build_components(self.cfg, self.env, self.tracking_uri, self.lease)
        self.state = c.state
        self.progress = Progress(
            c.total_steps,
            self.state.global_step,
            self.env.is_main,
            self.images_per_step * self.env.world_size,
        )
        with StopFlag() as self.stop, c.tracker:
            try:
                outcome = self._train()
            finally:
                self.progress.close()
            if outcome.status == "stopped":
                c.tracker.finish(RunEnd.REQUEUED)
            else:
                model = None
                if self.env.is_main:
                    module, classes = c.engine.module, c.train_loader.classes
                    exported = artifacts.export_final(c.run_dir, self.cfg, module, c.ema, classes, self.state)
                    if exported is not None:
                        example = c.val_loader.index.path(0) if len(c.val_loader.index) else None
                        model = artifacts.save_mlflow_model(self.cfg, exported, example, self.state)
                artifacts.log_final(c.tracker, c.epochs, c.run_dir, model, self.cfg, self.state)
        outcome.mlflow_run_id = c.tracker.run_id
        outcome.tracking_uri = c.tracker.tracking_uri if c.tracker.enabled else None
        return outcome

    def _train(self) -> TrainOutcome:
        state, cfg = self.state, self.cfg
        while state.epoch < cfg.run.epochs and state.global_step < self.c.total_steps:
            # A run stopped right after an epoch's last step has only that epoch's evaluation left.
            if self.c.train_loader.batches_left(state.epoch) >= self.accum:
                stopped = self._train_epoch()
                if stopped is not None:
                    return stopped
            state.epoch += 1
            self._end_of_epoch()
            if any_rank(self.stop.requested, self.env):
                return self._stop()
        return TrainOutcome(
            "finished", self.c.run_dir, state.global_step, state.epoch, metrics=state.metrics()
        )

    def _train_epoch(self) -> TrainOutcome | None:
        """The rest of the current epoch; the outcome when the ranks voted to stop in it."""
        state, meters = self.state, self.c.meters
        meters.new_epoch(state.global_step)
        batches = self.c.train_loader.iter_epoch(state.epoch)
        for micro, batch in enumerate(meters.timed(batches), 1):
            self._forward_backward(batch)
            if micro % self.accum:
                continue
            self._complete_step()
            if any_rank(self.stop.requested, self.env):
                return self._stop()  # the loader is still inside the epoch: its position is saved
            if state.global_step >= self.c.total_steps:
                break
            if self.c.ckpt.due(state.global_step):
                self._save()
        batches.close()
        self._record_steps()
        state.epoch_loss = meters.epoch.mean_loss
        images = (state.global_step - meters.epoch.first_step) * self.images_per_step * self.env.world_size
        state.epoch_img_per_s = images / max(time.perf_counter() - meters.epoch.started, 1e-9)
        return None

    # ---- one step ------------------------------------------------------------------------------

    def _to_inputs(self, batch: Batch, dtype: torch.dtype | None = None) -> tuple[dict[str, Tensor], Tensor]:
        inputs = batch.model_inputs(self.c.model_inputs.names, self.env.device, dtype or self.dtype)
        return inputs, batch.labels.to(self.env.device, non_blocking=True)

    def _forward_backward(self, batch: Batch) -> None:
        inputs, labels = self._to_inputs(batch)
        if self.c.mixup.enabled:
            inputs["images"], labels = self.c.mixup(inputs["images"], labels)
        loss = self._loss(self.c.engine(**inputs), labels)
        self.c.engine.backward(loss)
        self.lr = self.c.scheduler.get_last_lr()[0]  # before DeepSpeed's step moves the schedule on
        self.c.engine.step()
        self.c.meters.add_micro_batch(loss)
        if self.c.samples.enabled:
            self.step_samples += batch.index.tolist()  # a CPU tensor: no device sync

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        if target.ndim == 2:  # soft targets from mixup/cutmix (label smoothing already in them)
            return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.cross_entropy(logits, target, label_smoothing=self.cfg.optim.label_smoothing)

    def _complete_step(self) -> None:
        state, meters = self.state, self.c.meters
        state.global_step += 1
        if self.c.ema is not None:
            self.c.ema.update(self.c.engine.module)
        meters.end_step(state.global_step, state.epoch, self.lr)
        if self.c.samples.enabled:
            ids = " ".join(map(str, self.step_samples))
            self.c.samples.append({"step": state.global_step, "epoch": state.epoch, "samples": ids})
            self.step_samples = []
        if state.global_step % self.cfg.run.log_every == 0:
            self._log_interval()
        data_s = meters.interval.data_s / max(meters.steps_in_interval(), 1)
        self.progress.update(meters.last_loss, self.lr, data_s)

    # ---- logging, evaluation, checkpoints --------------------------------------------------------

    def _record_steps(self) -> None:
        """Every step trained so far into steps.csv (one read-back of the pending losses)."""
        for row in self.c.meters.drain():
            self.c.steps.append(row.as_dict())

    def _log_interval(self) -> None:
        self._record_steps()
        interval = self.c.meters.interval
        loss_sum, steps, data_s = all_reduce_sum(
            [interval.loss, float(interval.steps), interval.data_s], self.env
        )
        elapsed = max(time.perf_counter() - interval.started, 1e-9)
        self.c.tracker.log_metrics(
            {
                names.TRAIN_LOSS: loss_sum / max(steps, 1),
                names.TRAIN_LR: self.lr,
                names.TRAIN_IMG_PER_S: self.images_per_step * steps / elapsed,
                names.TRAIN_DATA_TIME: data_s / max(steps, 1),
                names.TRAIN_STEP_TIME: elapsed * self.env.world_size / max(steps, 1),
            },
            step=self.state.global_step,
        )
        self.c.meters.new_interval()

    def _average_norm_statistics(self) -> None:
        """Before an evaluation or a save: one set of BatchNorm statistics for every rank (norm_sync.py)."""
        average_running_statistics(self.c.engine.module, self.env)
        if self.c.ema is not None:
            average_running_statistics(self.c.ema.module, self.env)

    def _evaluate(self) -> tuple[dict[str, float], float | None]:
        c = self.c
        self._average_norm_statistics()
        metrics = evaluate(c.engine.module, c.val_loader, self._to_inputs, self.env)
        if c.ema is None:
            return metrics, None
        # The EMA copy is kept in fp32 whatever the training precision.
        ema = evaluate(c.ema.module, c.val_loader, lambda b: self._to_inputs(b, torch.float32), self.env)
        return metrics, ema["top1"]

    def _end_of_epoch(self) -> None:
        state, cfg = self.state, self.cfg
        completed = state.epoch
        final = completed >= cfg.run.epochs or state.global_step >= self.c.total_steps
        if completed % cfg.run.eval_every and not final:
            return
        metrics, ema_top1 = self._evaluate()
        wall = self.c.clock.elapsed()
        log.info(
            "epoch %d/%d: val top-1 %.2f%%, top-5 %.2f%%, loss %.4f over %d images%s",
            completed,
            cfg.run.epochs,
            metrics["top1"],
            metrics["top5"],
            metrics["loss"],
            metrics["count"],
            f" (EMA top-1 {ema_top1:.2f}%)" if ema_top1 is not None else "",
        )
        state.val_top1, state.val_top5, state.val_loss = metrics["top1"], metrics["top5"], metrics["loss"]
        self._log_epoch(completed, metrics, ema_top1, wall)
        state.last_eval_epoch = completed
        improved = metrics["top1"] > state.best_top1
        if improved:
            state.best_top1 = metrics["top1"]
        self._save(best_top1=metrics["top1"] if improved else None)

    def _log_epoch(
        self, completed: int, metrics: dict[str, float], ema_top1: float | None, wall: float
    ) -> None:
        state = self.state
        epoch_metrics = {
            names.EPOCH: completed,
            names.VAL_TOP1: metrics["top1"],
            names.VAL_TOP5: metrics["top5"],
            names.VAL_LOSS: metrics["loss"],
            names.TRAIN_EPOCH_LOSS: state.epoch_loss if state.epoch_loss is not None else float("nan"),
            names.WALL_TIME_S: wall,
        }
        if state.epoch_img_per_s:
            epoch_metrics[names.TRAIN_EPOCH_IMG_PER_S] = state.epoch_img_per_s
        if ema_top1 is not None:
            epoch_metrics["val/top1_ema"] = ema_top1
        self.c.tracker.log_metrics(epoch_metrics, step=completed)
        self.c.epochs.append(
            {
                "epoch": completed,
                "step": state.global_step,
                "train_loss": state.epoch_loss,
                "val_loss": metrics["loss"],
                "val_top1": metrics["top1"],
                "val_top5": metrics["top5"],
                "val_top1_ema": ema_top1,
                "img_per_s": state.epoch_img_per_s,
                "wall_s": wall,
            }
        )

    def _save(self, best_top1: float | None = None) -> Path:
        self._record_steps()  # steps.csv covers every step the checkpoint does
        self._average_norm_statistics()  # the checkpoint holds rank 0's module: the one every rank has
        return self.c.ckpt.save(self.state.global_step, best_top1=best_top1, epoch=self.state.epoch)

    def _stop(self) -> TrainOutcome:
        signum = self.stop.signum or signal.SIGUSR2  # another rank got it: the vote says stop
        state = self.state
        tag_dir = self._save()
        self.progress.write(f"stopped at step {state.global_step} on a stop signal; checkpoint {tag_dir}")
        log.info("stopped at step %d for a requeue; resume continues from %s", state.global_step, tag_dir)
        return TrainOutcome(
            "stopped", self.c.run_dir, state.global_step, state.epoch, stop_signal=signum, checkpoint=tag_dir
        )
