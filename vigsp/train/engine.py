"""The training loop: DALI batches -> model -> DeepSpeed, with evaluation, checkpoints and MLflow.

One ``Trainer`` per rank. Every rank runs the same sequence of collectives: the per-step stop
vote, the logging all-reduce every ``run.log_every`` steps, checkpoint saves and evaluation, so
no rank can leave the loop alone. Steps are *optimizer* steps; with gradient accumulation one
step takes ``deepspeed.gradient_accumulation_steps`` micro batches, and checkpoints only fall on
step boundaries, where nothing is half-accumulated.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vigsp.config import check_resume_compatible, config_hash, resolved_yaml, scaled_lr, to_deepspeed_config
from vigsp.config.schema import TrainConfig
from vigsp.data.loader import Batch, EvalLoader, TrainLoader, make_loaders
from vigsp.data.pipelines import MODEL_GRAPH_OUTPUTS
from vigsp.errors import UserError
from vigsp.models import create_model
from vigsp.models.summary import count_parameters
from vigsp.tracking import names
from vigsp.train import artifacts
from vigsp.train.checkpoint import CheckpointManager, rng_state, set_rng_state, tag_for
from vigsp.train.distributed import DistEnv, all_reduce_sum, any_rank, barrier
from vigsp.train.ema import ModelEma
from vigsp.train.evaluate import evaluate
from vigsp.train.mixup import Mixup
from vigsp.train.optim import build_optimizer, build_scheduler
from vigsp.train.outcome import TrainOutcome
from vigsp.train.progress import Progress
from vigsp.train.records import EPOCH_FIELDS, EPOCHS_FILE, STEP_FIELDS, STEPS_FILE, CsvRecord
from vigsp.train.signals import StopFlag

log = logging.getLogger("vigsp.train")

CONFIG_FILE = "config.yaml"
CLIENT_STATE_VERSION = 1


@dataclass
class Position:
    """Where training is; saved in every checkpoint's client_state."""

    epoch: int = 0  # the epoch being trained (or next, after its end)
    global_step: int = 0  # optimizer steps done
    best_top1: float = -math.inf
    wall_s: float = 0.0  # training seconds before this process started
    resumes: int = 0
    last_eval_epoch: int = 0  # epochs completed whose evaluation is logged
    extra: dict[str, Any] = field(default_factory=dict)


def _run_dir(cfg: TrainConfig) -> Path:
    return (cfg.run.output_dir / cfg.run.name).resolve()


def _check_model_matches_data(model: nn.Module, cfg: TrainConfig) -> None:
    needs = getattr(model, "needs_superpixels", False)
    sp = cfg.data.superpixel
    if needs and sp is None:
        raise UserError(
            f"model {cfg.model.name!r} needs superpixel graphs but data.superpixel is null; set "
            f"data.superpixel.method={model.superpixel_method} and "
            f"data.superpixel.n_segments={model.n_segments}"
        )
    if needs and sp is not None and sp.method != model.superpixel_method:
        raise UserError(
            f"model {cfg.model.name!r} is built for data.superpixel.method={model.superpixel_method!r}, "
            f"the config has {sp.method!r}; change one of them"
        )


def match_buffers_to_weights(module: nn.Module) -> None:
    """DeepSpeed's bf16 casts parameters but not buffers; BatchNorm on the CPU needs its running
    statistics in the weights' dtype, so cast floating-point buffers to match."""
    dtype = next(module.parameters()).dtype
    for buffer in module.buffers():
        if buffer.is_floating_point() and buffer.dtype != dtype:
            buffer.data = buffer.data.to(dtype)


class Trainer:
    def __init__(self, cfg: TrainConfig, env: DistEnv, tracking_uri: str | None = None) -> None:
        self.cfg = cfg
        self.env = env
        self.tracking_uri = tracking_uri or cfg.tracking.tracking_uri
        self.run_dir = _run_dir(cfg)
        self.ckpt = CheckpointManager(self.run_dir, env, cfg.checkpoint.keep_last, cfg.checkpoint.keep_best)
        self.steps = CsvRecord(self.run_dir / STEPS_FILE, STEP_FIELDS, env.is_main)
        self.epochs = CsvRecord(self.run_dir / EPOCHS_FILE, EPOCH_FIELDS, env.is_main)
        self.dtype = torch.bfloat16 if cfg.deepspeed.bf16 else torch.float32
        self.pos = Position()
        self.rank_state: dict[str, Any] = {}

    # ---- set-up ----------------------------------------------------------------------------------

    def _resume_dir(self) -> Path | None:
        setting = self.cfg.checkpoint.resume
        if setting == "never":
            if self.ckpt.complete_tags():
                raise UserError(
                    f"{self.run_dir} already holds checkpoints and checkpoint.resume=never would overwrite "
                    "them; choose another run.name, delete the directory, or use checkpoint.resume=auto"
                )
            return None
        if setting == "auto":
            tag = self.ckpt.latest_tag()
            return self.ckpt.dir / tag if tag else None
        path = Path(setting).resolve()
        if not path.is_dir():
            raise UserError(f"checkpoint.resume={setting}: no such checkpoint directory")
        return path

    def _check_resumable(self, tag_dir: Path) -> dict[str, Any]:
        saved = torch.load(tag_dir / "vigsp_state.pt", weights_only=False)
        check_resume_compatible(saved["config"], self.cfg, str(tag_dir))
        world = saved["world_size"]
        if world != self.env.world_size and self.cfg.deepspeed.zero_stage > 0:
            raise UserError(
                f"{tag_dir} was written by {world} ranks with ZeRO stage {self.cfg.deepspeed.zero_stage}, "
                f"whose optimizer state is sharded per rank; resume with {world} ranks, or convert it with "
                f"`python -m deepspeed.checkpoint.ds_to_universal --input_folder {tag_dir} --output_folder "
                f"{tag_dir}_universal` and train with deepspeed.zero_stage=0 from that universal checkpoint"
            )
        if world != self.env.world_size:
            log.warning(
                "resuming %s with %d ranks instead of %d: weights and optimizer carry over; the "
                "interrupted epoch's data order is redrawn for the new world size",
                tag_dir,
                self.env.world_size,
                world,
            )
        return saved

    def _build_model(self) -> nn.Module:
        cfg = self.cfg
        model = create_model(
            cfg.model.name,
            num_classes=cfg.model.num_classes,
            drop_path_rate=cfg.model.drop_path_rate,
            **cfg.model.overrides,
        )
        _check_model_matches_data(model, cfg)
        return model

    def _to_inputs(self, batch: Batch, dtype: torch.dtype | None = None) -> tuple[tuple[Tensor, ...], Tensor]:
        dtype = dtype or self.dtype
        batch = batch.to(self.env.device)
        images = batch.images.to(dtype)
        if batch.node_features is None:
            return (images,), batch.labels
        return (images, batch.label_maps, batch.node_features.to(dtype), batch.node_mask), batch.labels

    # ---- the run -------------------------------------------------------------------------------

    def run(self) -> TrainOutcome:
        import deepspeed

        from vigsp.tracking import RunEnd, Tracker

        cfg, env = self.cfg, self.env
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.ckpt.remove_incomplete()
        barrier(env)
        resume_dir = self._resume_dir()
        saved = self._check_resumable(resume_dir) if resume_dir else None
        rank_state: dict[str, Any] = {}
        # Positions of another world size's shards are of no use: the epoch restarts (warned above).
        if resume_dir is not None and saved["world_size"] == env.world_size:
            rank_state = self.ckpt.load_rank_state(resume_dir)
        self.rank_state = rank_state

        # Denormal floats are ~100x slower on x86 CPUs, and dark image backgrounds (Fashion-MNIST
        # is mostly black) fill activations with them: flushing them to zero made CPU training 4x
        # faster with identical losses to the printed precision.
        torch.set_flush_denormal(True)
        # Same seed on every rank, so every rank builds identical weights; then per rank for dropout.
        torch.manual_seed(cfg.run.seed)
        np.random.seed(cfg.run.seed)
        model = self._build_model().to(env.device)
        n_params = count_parameters(model)
        train_loader, val_loader = make_loaders(
            cfg.data,
            rank=env.rank,
            world_size=env.world_size,
            state=rank_state.get("data"),
            device_id=env.dali_device_id,
            superpixel_step="auto" if getattr(model, "needs_superpixels", False) else None,
            outputs=MODEL_GRAPH_OUTPUTS,
        )
        accum = cfg.deepspeed.gradient_accumulation_steps
        steps_per_epoch = train_loader.steps_per_epoch // accum
        if steps_per_epoch == 0:
            raise UserError(
                f"one epoch has {train_loader.steps_per_epoch} micro batches per rank, fewer than "
                f"deepspeed.gradient_accumulation_steps={accum}; lower it or data.batch_size"
            )
        total_steps = cfg.run.epochs * steps_per_epoch
        if cfg.run.max_steps is not None:
            total_steps = min(total_steps, cfg.run.max_steps)
        peak_lr = scaled_lr(cfg, env.world_size)
        optimizer = build_optimizer(model, cfg.optim, peak_lr)
        scheduler = build_scheduler(
            optimizer, cfg.schedule, peak_lr=peak_lr, total_steps=total_steps, steps_per_epoch=steps_per_epoch
        )
        engine, optimizer, _, scheduler = deepspeed.initialize(
            model=model,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=to_deepspeed_config(cfg, env.world_size),
            dist_init_required=False,
        )
        match_buffers_to_weights(engine.module)
        ema = ModelEma(engine.module, cfg.optim.ema_decay) if cfg.optim.ema_decay else None
        if ema is not None:
            ema.module.float()

        client: dict[str, Any] = {}
        if resume_dir is not None:
            client = self.ckpt.load(engine, resume_dir)
            self.pos = Position(**client["position"])
            self.pos.resumes += 1
            if ema is not None and client.get("ema") is not None:
                ema.load_state_dict(client["ema"])
            if rank_state.get("rng"):
                set_rng_state(rank_state["rng"])
            else:
                torch.manual_seed(cfg.run.seed + 1000 * env.rank + self.pos.global_step)
            self.steps.truncate("step", self.pos.global_step)
            self.epochs.truncate("epoch", self.pos.last_eval_epoch)
        else:
            torch.manual_seed(cfg.run.seed + 1000 * env.rank + 1)
        if env.is_main:
            (self.run_dir / CONFIG_FILE).write_text(resolved_yaml(cfg))

        tracker = Tracker.open(
            cfg.model_dump(mode="json"),
            self.run_dir,
            env.rank,
            tracking_uri=self.tracking_uri,
            experiment=cfg.tracking.experiment_name,
            run_id=client.get("mlflow_run_id"),
            run_name=cfg.run.name,
        )
        tracker.set_tags(
            {
                names.TAG_NUM_PARAMS: n_params,
                names.TAG_MODEL_NAME: cfg.model.name,
                names.TAG_RESUME_COUNT: self.pos.resumes,
                "vigsp.world_size": env.world_size,
                "vigsp.config_hash": config_hash(cfg),
            }
        )
        log.info(
            "run directory %s (checkpoints in %s); %s with %s parameters on %d rank(s), %s; %d steps "
            "of %d images",
            self.run_dir,
            self.ckpt.dir,
            cfg.model.name,
            f"{n_params:,}",
            env.world_size,
            env.device,
            total_steps,
            cfg.data.batch_size * accum * env.world_size,
        )
        if resume_dir is not None:
            log.info(
                "resumed from %s at step %d (epoch %d)", resume_dir, self.pos.global_step, self.pos.epoch
            )
        if env.is_main and tracker.enabled:
            log.info("MLflow: run %s at %s", tracker.run_id or "(opening)", tracker.tracking_uri)
            if resume_dir is None:
                artifacts.log_superpixel_overlay(tracker, cfg, val_loader, self.run_dir)

        loop = _Loop(
            self, engine, scheduler, ema, train_loader, val_loader, tracker, total_steps, steps_per_epoch
        )
        with StopFlag() as stop, tracker:
            outcome = loop.run(stop)
            if outcome.status == "stopped":
                tracker.finish(RunEnd.REQUEUED)
            else:
                artifacts.log_final(tracker, self.run_dir, engine.module, ema, self.epochs)
        outcome.mlflow_run_id = tracker.run_id
        outcome.tracking_uri = tracker.tracking_uri if tracker.enabled else None
        return outcome

    # ---- saving --------------------------------------------------------------------------------

    def save(
        self,
        engine: Any,
        ema: ModelEma | None,
        loader: TrainLoader,
        tracker: Any,
        mix_rng: np.random.Generator,
    ) -> Path:
        tracker.flush()  # metrics up to this step are in MLflow before the checkpoint claims them
        client = {
            "version": CLIENT_STATE_VERSION,
            "position": vars(self.pos) | {"extra": dict(self.pos.extra)},
            "ema": ema.state_dict() if ema is not None else None,
            "mlflow_run_id": tracker.run_id,
            "config_hash": config_hash(self.cfg),
            "world_size": self.env.world_size,
        }
        tag_dir = self.ckpt.dir / tag_for(self.pos.global_step)
        if self.env.is_main:
            tag_dir.mkdir(parents=True, exist_ok=True)
            torch.save(
                {"config": self.cfg.model_dump(mode="json"), "world_size": self.env.world_size},
                tag_dir / "vigsp_state.pt",
            )
        rank_state = {"data": loader.state_dict(), "rng": rng_state(), "mix_rng": mix_rng.bit_generator.state}
        return self.ckpt.save(engine, self.pos.global_step, client, rank_state)


class _Loop:
    """The epoch/step loop of one ``Trainer.run``; split out to keep the set-up readable."""

    def __init__(
        self,
        trainer: Trainer,
        engine: Any,
        scheduler: Any,
        ema: ModelEma | None,
        train_loader: TrainLoader,
        val_loader: EvalLoader,
        tracker: Any,
        total_steps: int,
        steps_per_epoch: int,
    ) -> None:
        self.t = trainer
        self.engine = engine
        self.scheduler = scheduler
        self.ema = ema
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.tracker = tracker
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        cfg = trainer.cfg
        aug = cfg.data.augmentation
        self.mixup = Mixup(
            aug.mixup_alpha, aug.cutmix_alpha, cfg.model.num_classes, cfg.optim.label_smoothing
        )
        self.mix_rng = np.random.default_rng([cfg.run.seed, trainer.env.rank])
        if trainer.rank_state.get("mix_rng"):
            self.mix_rng.bit_generator.state = trainer.rank_state["mix_rng"]
        self.images_per_step = cfg.data.batch_size * cfg.deepspeed.gradient_accumulation_steps
        self.started = time.perf_counter()

    def _loss(self, logits: Tensor, target: Tensor) -> Tensor:
        logits = logits.float()
        if target.ndim == 2:  # soft targets from mixup/cutmix (label smoothing already in them)
            return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()
        return F.cross_entropy(logits, target, label_smoothing=self.t.cfg.optim.label_smoothing)

    def _wall_s(self) -> float:
        return self.t.pos.wall_s + time.perf_counter() - self.started

    def run(self, stop: StopFlag) -> TrainOutcome:
        t, pos, env, cfg = self.t, self.t.pos, self.t.env, self.t.cfg
        accum = cfg.deepspeed.gradient_accumulation_steps
        progress = Progress(
            self.total_steps, pos.global_step, env.is_main, self.images_per_step * env.world_size
        )
        interval_loss, interval_steps, interval_data_s = 0.0, 0, 0.0
        interval_start = time.perf_counter()
        try:
            while pos.epoch < cfg.run.epochs and pos.global_step < self.total_steps:
                epoch = pos.epoch
                # Steps already done in this epoch (resuming mid-epoch), from the global step count.
                done_in_epoch = pos.global_step - epoch * self.steps_per_epoch
                if done_in_epoch < self.steps_per_epoch:
                    epoch_loss = [0.0, 0]
                    epoch_start, epoch_first_step = time.perf_counter(), pos.global_step
                    micro, step_loss = 0, 0.0
                    fetch_start = time.perf_counter()
                    batches = self.train_loader.iter_epoch(epoch)
                    for batch in batches:
                        interval_data_s += time.perf_counter() - fetch_start
                        inputs, labels = t._to_inputs(batch)
                        if self.mixup.enabled:
                            mixed, labels = self.mixup(inputs[0], labels, self.mix_rng)
                            inputs = (mixed, *inputs[1:])
                        loss = self._loss(self.engine(*inputs), labels)
                        self.engine.backward(loss)
                        lr = self.scheduler.get_last_lr()[0]
                        self.engine.step()
                        step_loss += float(loss.detach()) / accum
                        micro += 1
                        if micro % accum:
                            fetch_start = time.perf_counter()
                            continue
                        # ---- an optimizer step is complete -------------------------------------
                        pos.global_step += 1
                        done_in_epoch += 1
                        if self.ema is not None:
                            self.ema.update(self.engine.module)
                        t.steps.append({"step": pos.global_step, "epoch": epoch, "loss": step_loss, "lr": lr})
                        epoch_loss[0] += step_loss
                        epoch_loss[1] += 1
                        interval_loss += step_loss
                        interval_steps += 1
                        progress.update(step_loss, lr, interval_data_s / max(interval_steps, 1))
                        step_loss = 0.0
                        if pos.global_step % cfg.run.log_every == 0:
                            self._log_interval(
                                interval_loss, interval_steps, interval_data_s, interval_start, lr
                            )
                            interval_loss, interval_steps, interval_data_s = 0.0, 0, 0.0
                            interval_start = time.perf_counter()
                        last = done_in_epoch >= self.steps_per_epoch or pos.global_step >= self.total_steps
                        if any_rank(stop.requested, env):
                            # At an epoch's last step the restart finds the epoch done and evaluates it.
                            return self._stop(stop, progress)
                        if last:
                            break
                        if pos.global_step % cfg.checkpoint.every_n_steps == 0:
                            pos.wall_s, self.started = self._wall_s(), time.perf_counter()
                            t.save(self.engine, self.ema, self.train_loader, self.tracker, self.mix_rng)
                        fetch_start = time.perf_counter()
                    batches.close()
                    pos.extra["epoch_loss"] = epoch_loss[0] / max(epoch_loss[1], 1)
                    epoch_images = (
                        (pos.global_step - epoch_first_step) * self.images_per_step * env.world_size
                    )
                    pos.extra["epoch_img_per_s"] = epoch_images / max(time.perf_counter() - epoch_start, 1e-9)
                    pos.epoch += 1
                else:
                    pos.epoch += 1  # stopped right after this epoch's last step: only its evaluation is left
                self._end_of_epoch(pos.epoch)
                if any_rank(stop.requested, env):
                    return self._stop(stop, progress)
        finally:
            progress.close()
        return TrainOutcome("finished", t.run_dir, pos.global_step, pos.epoch, metrics=dict(pos.extra))

    def _log_interval(self, loss_sum: float, steps: int, data_s: float, started: float, lr: float) -> None:
        env = self.t.env
        loss_sum, steps_all, data_s = all_reduce_sum([loss_sum, float(steps), data_s], env)
        elapsed = max(time.perf_counter() - started, 1e-9)
        self.tracker.log_metrics(
            {
                names.TRAIN_LOSS: loss_sum / max(steps_all, 1),
                names.TRAIN_LR: lr,
                names.TRAIN_IMG_PER_S: self.images_per_step * steps_all / elapsed,
                names.TRAIN_DATA_TIME: data_s / max(steps_all, 1),
                names.TRAIN_STEP_TIME: elapsed * env.world_size / max(steps_all, 1),
            },
            step=self.t.pos.global_step,
        )

    def _end_of_epoch(self, completed: int) -> None:
        t, pos, cfg = self.t, self.t.pos, self.t.cfg
        final = completed >= cfg.run.epochs or pos.global_step >= self.total_steps
        if completed % cfg.run.eval_every and not final:
            return
        metrics = evaluate(self.engine.module, self.val_loader, t._to_inputs, t.env)
        ema_top1 = None
        if self.ema is not None:
            # The EMA copy is kept in fp32 whatever the training precision.
            ema_top1 = evaluate(
                self.ema.module, self.val_loader, lambda b: t._to_inputs(b, torch.float32), t.env
            )["top1"]
        wall = self._wall_s()
        img_per_s = pos.extra.get("epoch_img_per_s")
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
        epoch_metrics = {
            names.EPOCH: completed,
            names.VAL_TOP1: metrics["top1"],
            names.VAL_TOP5: metrics["top5"],
            names.VAL_LOSS: metrics["loss"],
            names.TRAIN_EPOCH_LOSS: pos.extra.get("epoch_loss", math.nan),
            names.WALL_TIME_S: wall,
        }
        if img_per_s:
            epoch_metrics[names.TRAIN_EPOCH_IMG_PER_S] = img_per_s
        if ema_top1 is not None:
            epoch_metrics["val/top1_ema"] = ema_top1
        self.tracker.log_metrics(epoch_metrics, step=completed)
        pos.extra.update(val_top1=metrics["top1"], val_top5=metrics["top5"], val_loss=metrics["loss"])
        t.epochs.append(
            {
                "epoch": completed,
                "step": pos.global_step,
                "train_loss": pos.extra.get("epoch_loss"),
                "val_loss": metrics["loss"],
                "val_top1": metrics["top1"],
                "val_top5": metrics["top5"],
                "val_top1_ema": ema_top1,
                "img_per_s": img_per_s,
                "wall_s": wall,
            }
        )
        pos.last_eval_epoch = completed
        improved = metrics["top1"] > pos.best_top1
        if improved:
            pos.best_top1 = metrics["top1"]
        pos.wall_s, self.started = wall, time.perf_counter()
        tag_dir = t.save(self.engine, self.ema, self.train_loader, self.tracker, self.mix_rng)
        if improved:
            t.ckpt.mark_best(tag_dir.name, metrics["top1"], completed)

    def _stop(self, stop: StopFlag, progress: Progress) -> TrainOutcome:
        t, pos = self.t, self.t.pos
        signum = stop.signum or signal.SIGUSR2  # another rank got it: the vote says stop
        pos.wall_s, self.started = self._wall_s(), time.perf_counter()
        tag_dir = t.save(self.engine, self.ema, self.train_loader, self.tracker, self.mix_rng)
        progress.write(f"stopped at step {pos.global_step} on a stop signal; checkpoint {tag_dir}")
        log.info("stopped at step %d for a requeue; resume continues from %s", pos.global_step, tag_dir)
        return TrainOutcome(
            "stopped", t.run_dir, pos.global_step, pos.epoch, stop_signal=signum, checkpoint=tag_dir
        )
