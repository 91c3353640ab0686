"""Everything a training run is made of, built once per rank and restored from the checkpoint
being resumed: ``build_components(cfg, env) -> Components``.

The order matters for bit-exact runs: the model is built from the run seed on every rank (same
weights everywhere), then the data, the optimizer and DeepSpeed, and only then is anything
restored, so that every generator continues from where the checkpoint left it.
"""

from __future__ import annotations

import logging
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vigsp.config import check_resume_compatible, config_hash, resolved_yaml, scaled_lr, to_deepspeed_config
from vigsp.config.model_inputs import declared_inputs, model_arguments
from vigsp.config.schema import TrainConfig
from vigsp.data.loader import EvalLoader, TrainLoader, make_loaders
from vigsp.errors import UserError
from vigsp.models import create_model
from vigsp.models.inputs import ModelInputs
from vigsp.models.summary import count_parameters
from vigsp.tracking import names
from vigsp.train import artifacts
from vigsp.train.checkpoint import CheckpointManager
from vigsp.train.distributed import DistEnv, barrier
from vigsp.train.ema import ModelEma
from vigsp.train.lease import RunLease
from vigsp.train.meters import TrainMeters
from vigsp.train.mixup import Mixup
from vigsp.train.optim import LrSchedule, build_optimizer, build_scheduler
from vigsp.train.records import (
    EPOCH_FIELDS,
    EPOCHS_FILE,
    SAMPLE_FIELDS,
    SAMPLES_DIR,
    STEP_FIELDS,
    STEPS_FILE,
    CsvRecord,
)
from vigsp.train.reshard import optimizer_is_sharded, universal_copy
from vigsp.train.state import RngState, TrainState, WallClock

log = logging.getLogger("vigsp.train")

CONFIG_FILE = "config.yaml"

__all__ = ["CONFIG_FILE", "Components", "build_components", "match_buffers_to_weights"]


@dataclass
class Components:
    run_dir: Path
    model_inputs: ModelInputs
    ckpt: CheckpointManager
    state: TrainState
    clock: WallClock
    steps: CsvRecord
    epochs: CsvRecord
    samples: CsvRecord  # this rank's (run.record_samples)
    meters: TrainMeters
    engine: Any  # deepspeed.DeepSpeedEngine
    scheduler: Any
    ema: ModelEma | None
    mixup: Mixup
    train_loader: TrainLoader
    val_loader: EvalLoader
    tracker: Any  # vigsp.tracking.Tracker
    total_steps: int


class MlflowRunLink:
    """Which MLflow run a checkpoint belongs to. Taking its state flushes the tracker first, so
    the metrics up to the checkpoint's step are in MLflow before the checkpoint claims them."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.tracker: Any = None

    def state_dict(self) -> dict[str, str | None]:
        if self.tracker is not None:
            self.tracker.flush()
            self.run_id = self.tracker.run_id
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict[str, str | None]) -> None:
        self.run_id = state.get("run_id")


def match_buffers_to_weights(module: nn.Module) -> None:
    """DeepSpeed's bf16 casts parameters but not buffers; BatchNorm on the CPU needs its running
    statistics in the weights' dtype, so cast floating-point buffers to match."""
    dtype = next(module.parameters()).dtype
    for buffer in module.buffers():
        if buffer.is_floating_point() and buffer.dtype != dtype:
            buffer.data = buffer.data.to(dtype)


@dataclass(frozen=True)
class ResumePoint:
    """The tag to resume, and where DeepSpeed loads it from: its universal copy (inside the tag)
    when another world size resumes an optimizer state that is sharded per rank."""

    tag_dir: Path
    universal_root: Path | None = None


def _checkpoints(
    cfg: TrainConfig, env: DistEnv, lease: RunLease | None
) -> tuple[CheckpointManager, ResumePoint | None]:
    """The run's checkpoint manager, and what to resume, checked against the config before
    anything is built (None: a fresh start)."""
    c = cfg.checkpoint
    ckpt = CheckpointManager(
        cfg.run.directory,
        env,
        c.keep_last,
        c.keep_best,
        c.every_n_steps,
        meta={"config": cfg.model_dump(mode="json")},
        lease=lease,
    )
    if env.is_main:
        cfg.run.directory.mkdir(parents=True, exist_ok=True)
        ckpt.remove_incomplete()
    barrier(env)
    tag_dir = ckpt.resume_dir(cfg.checkpoint.resume)
    if tag_dir is None:
        return ckpt, None
    saved = ckpt.read_meta(tag_dir)
    check_resume_compatible(saved["config"], cfg, str(tag_dir))
    world = saved["world_size"]
    if world == env.world_size:
        return ckpt, ResumePoint(tag_dir)
    log.warning(
        "resuming %s with %d ranks instead of %d: weights and optimizer carry over; the "
        "interrupted epoch goes on with the images no rank had taken",
        tag_dir,
        env.world_size,
        world,
    )
    universal = universal_copy(tag_dir, env) if optimizer_is_sharded(tag_dir) else None
    return ckpt, ResumePoint(tag_dir, universal)


def _build_model(cfg: TrainConfig, env: DistEnv) -> nn.Module:
    # Denormal floats are ~100x slower on x86 CPUs, and dark image backgrounds (Fashion-MNIST
    # is mostly black) fill activations with them: flushing them to zero made CPU training 4x
    # faster with identical losses to the printed precision.
    torch.set_flush_denormal(True)
    # Same seed on every rank, so every rank builds identical weights; then per rank for dropout.
    torch.manual_seed(cfg.run.seed)
    np.random.seed(cfg.run.seed)
    return create_model(cfg.model.name, **model_arguments(cfg)).to(env.device)


def _build_engine(
    cfg: TrainConfig, env: DistEnv, model: nn.Module, schedule: LrSchedule, load_universal: bool = False
) -> Any:
    import deepspeed

    ds_config = to_deepspeed_config(cfg, env.world_size)
    if load_universal:  # DeepSpeed re-partitions a universal checkpoint at load time
        ds_config["checkpoint"] = {"load_universal": True}
    optimizer = build_optimizer(model, cfg.optim, schedule.peak_lr)
    scheduler = build_scheduler(optimizer, schedule)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=ds_config,
        dist_init_required=False,
    )
    match_buffers_to_weights(engine.module)
    return engine, scheduler


def _build_mixup(cfg: TrainConfig, env: DistEnv) -> Mixup:
    aug = cfg.data.augmentation
    seed = [cfg.run.seed, env.rank]  # per rank: each rank mixes its own batches
    return Mixup(aug.mixup_alpha, aug.cutmix_alpha, cfg.model.num_classes, cfg.optim.label_smoothing, seed)


def _training_length(cfg: TrainConfig, loader: TrainLoader) -> tuple[int, int]:
    """(total optimizer steps, optimizer steps per epoch)."""
    accum = cfg.deepspeed.gradient_accumulation_steps
    steps_per_epoch = loader.steps_per_epoch // accum
    if steps_per_epoch == 0:
        raise UserError(
            f"one epoch has {loader.full_batches} micro batches per rank, fewer than "
            f"deepspeed.gradient_accumulation_steps={accum}; lower it or data.batch_size"
        )
    total = cfg.run.epochs * steps_per_epoch
    if cfg.run.max_steps is not None:
        total = min(total, cfg.run.max_steps)
    return total, steps_per_epoch


def _length_from_here(cfg: TrainConfig, state: TrainState, loader: TrainLoader, steps_per_epoch: int) -> int:
    """The run's last optimizer step, counted from where it stands: what is left of the current
    epoch (after a resume on another world size, not a whole epoch's worth) and the later epochs."""
    if state.epoch >= cfg.run.epochs:
        return state.global_step
    left = loader.batches_left(state.epoch) // cfg.deepspeed.gradient_accumulation_steps
    total = state.global_step + left + (cfg.run.epochs - state.epoch - 1) * steps_per_epoch
    return min(total, cfg.run.max_steps) if cfg.run.max_steps is not None else total


def _continue_from_here(
    cfg: TrainConfig,
    env: DistEnv,
    state: TrainState,
    loader: TrainLoader,
    schedule: LrSchedule,
    steps_per_epoch: int,
) -> int:
    """After the restore: the run's last step, the lr schedule continued onto it when the layout
    changed, and the world size noted (and logged when it changed). Returns the last step."""
    total_steps = _length_from_here(cfg, state, loader, steps_per_epoch)
    if schedule.saved_layout not in (None, schedule.layout):  # resumed on another layout
        schedule.rebase(state.global_step, total_steps)
    if state.record_world_size(env.world_size) and len(state.world_sizes) > 1:
        log.warning("the world size changed at step %d: %s", state.global_step, state.world_size_history())
    return total_steps


def build_components(
    cfg: TrainConfig, env: DistEnv, tracking_uri: str | None, lease: RunLease | None = None
) -> Components:
    run_dir = cfg.run.directory
    ckpt, resume = _checkpoints(cfg, env, lease)
    inputs = declared_inputs(cfg)
    model = _build_model(cfg, env)
    n_params = count_parameters(model)
    train_loader, val_loader = make_loaders(
        cfg.data,
        rank=env.rank,
        world_size=env.world_size,
        device_id=env.dali_device_id,
        superpixel_step="auto" if inputs.needs_superpixels else None,
        outputs=inputs.pipeline_outputs,
        accum=cfg.deepspeed.gradient_accumulation_steps,
    )
    total_steps, steps_per_epoch = _training_length(cfg, train_loader)
    schedule = LrSchedule(
        cfg.schedule,
        peak_lr=scaled_lr(cfg, env.world_size),
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        layout=list(astuple(train_loader.layout)),
    )
    load_universal = resume is not None and resume.universal_root is not None
    engine, scheduler = _build_engine(cfg, env, model, schedule, load_universal)
    # The EMA copy is kept in fp32 whatever the training precision.
    ema = ModelEma(engine.module, cfg.optim.ema_decay).float() if cfg.optim.ema_decay else None
    mixup = _build_mixup(cfg, env)
    state, clock, rng, run_link = TrainState(), WallClock(), RngState(cfg.run.seed, env.rank), MlflowRunLink()
    ckpt.register_engine(engine)
    ckpt.register_all({"tracker": run_link, "train": state, "clock": clock, "ema": ema})
    # Run-wide, so another world size finds them: the schedule and the data position.
    ckpt.register_all({"schedule": schedule, "data_progress": train_loader.progress})
    ckpt.register_all({"data": train_loader, "rng": rng, "mixup": mixup}, per_rank=True)
    steps = CsvRecord(run_dir / STEPS_FILE, STEP_FIELDS, env.is_main)
    epochs = CsvRecord(run_dir / EPOCHS_FILE, EPOCH_FIELDS, env.is_main)
    samples = CsvRecord(
        run_dir / SAMPLES_DIR / f"rank_{env.rank:05d}.csv", SAMPLE_FIELDS, cfg.run.record_samples
    )
    samples.create_directory()
    _restore(ckpt, resume, state, rng, (steps, epochs))
    total_steps = _continue_from_here(cfg, env, state, train_loader, schedule, steps_per_epoch)
    if env.is_main:
        (run_dir / CONFIG_FILE).write_text(resolved_yaml(cfg))
    tracker = _open_tracker(cfg, env, run_dir, tracking_uri, run_link, state, n_params, ckpt.resume_note)
    run_link.tracker = tracker
    _log_start(cfg, env, ckpt, n_params, total_steps, resume, state, tracker)
    if env.is_main and tracker.enabled and resume is None:
        artifacts.log_superpixel_overlay(tracker, cfg, val_loader, run_dir)
    return Components(
        run_dir=run_dir,
        model_inputs=inputs,
        ckpt=ckpt,
        state=state,
        clock=clock,
        steps=steps,
        epochs=epochs,
        samples=samples,
        meters=TrainMeters(cfg.deepspeed.gradient_accumulation_steps),
        engine=engine,
        scheduler=scheduler,
        ema=ema,
        mixup=mixup,
        train_loader=train_loader,
        val_loader=val_loader,
        tracker=tracker,
        total_steps=total_steps,
    )


def _restore(
    ckpt: CheckpointManager,
    resume: ResumePoint | None,
    state: TrainState,
    rng: RngState,
    records: tuple[CsvRecord, CsvRecord],
) -> None:
    """Every registered state from ``resume``, and the step/epoch/sample records cut back to it."""
    if resume is None:
        rng.reseed(0)
        return
    if not ckpt.load(resume.tag_dir, resume.universal_root):
        rng.reseed(state.global_step)  # another world size: this rank's own states do not fit
    state.resumes += 1
    steps, epochs = records
    steps.truncate("step", state.global_step)
    epochs.truncate("epoch", state.last_eval_epoch)
    if steps.enabled:  # rank 0: every world size's sample files, not only this world's ranks'
        for path in sorted((steps.path.parent / SAMPLES_DIR).glob("rank_*.csv")):
            CsvRecord(path, SAMPLE_FIELDS, True).truncate("step", state.global_step)


def _open_tracker(
    cfg: TrainConfig,
    env: DistEnv,
    run_dir: Path,
    tracking_uri: str | None,
    run_link: MlflowRunLink,
    state: TrainState,
    n_params: int,
    ckpt_note: str | None,
) -> Any:
    from vigsp.tracking import Tracker

    tracker = Tracker.open(
        cfg.model_dump(mode="json"),
        run_dir,
        env.rank,
        tracking_uri=tracking_uri,
        experiment=cfg.tracking.experiment_name,
        run_id=run_link.run_id,
        run_name=cfg.run.name,
    )
    tracker.set_tags(
        {
            names.TAG_NUM_PARAMS: n_params,
            names.TAG_MODEL_NAME: cfg.model.name,
            names.TAG_RESUME_COUNT: state.resumes,
            "vigsp.world_size": env.world_size,
            names.TAG_WORLD_SIZE_HISTORY: state.world_size_history(),
            "vigsp.config_hash": config_hash(cfg),
        }
    )
    if ckpt_note is not None:
        tracker.set_tags({names.TAG_CHECKPOINT_FALLBACK: ckpt_note})
    return tracker


def _log_start(
    cfg: TrainConfig,
    env: DistEnv,
    ckpt: CheckpointManager,
    n_params: int,
    total_steps: int,
    resume: ResumePoint | None,
    state: TrainState,
    tracker: Any,
) -> None:
    log.info(
        "run directory %s (checkpoints in %s); %s with %s parameters on %d rank(s), %s; %d steps "
        "of %d images",
        cfg.run.directory,
        ckpt.dir,
        cfg.model.name,
        f"{n_params:,}",
        env.world_size,
        env.device,
        total_steps,
        cfg.data.batch_size * cfg.deepspeed.gradient_accumulation_steps * env.world_size,
    )
    if resume is not None:
        log.info("resumed from %s at step %d (epoch %d)", resume.tag_dir, state.global_step, state.epoch)
    if env.is_main and tracker.enabled:
        log.info("MLflow: run %s at %s", tracker.run_id or "(opening)", tracker.tracking_uri)
