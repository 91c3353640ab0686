"""The schema of a training run, assembled from the sections their owners declare.

Each section sits beside the code that reads it (``vigsp.data.config``, ``vigsp.models.config``,
``vigsp.train.config``, ``vigsp.tracking.config``, ``vigsp.launch.config``) and forbids unknown
keys, so a typo (``optim.lrr``) is an error instead of a silently ignored setting. Field
descriptions double as the reference documentation (``vigsp config show --keys``). This module
adds only the checks that span sections.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from vigsp.config.section import SHAPES_CHECKPOINT, Section
from vigsp.data.config import AugmentationConfig, DataConfig, RandAugmentConfig, SuperpixelConfig
from vigsp.launch.config import LaunchConfig, slurm_time_to_minutes
from vigsp.models.config import ModelConfig
from vigsp.tracking.config import TrackingConfig
from vigsp.train.config import CheckpointConfig, DeepSpeedSection, OptimConfig, RunConfig, ScheduleConfig

__all__ = [
    "AugmentationConfig",
    "CheckpointConfig",
    "DataConfig",
    "DeepSpeedSection",
    "LaunchConfig",
    "ModelConfig",
    "OptimConfig",
    "RandAugmentConfig",
    "RunConfig",
    "ScheduleConfig",
    "Section",
    "SuperpixelConfig",
    "TrackingConfig",
    "TrainConfig",
    "slurm_time_to_minutes",
]


class TrainConfig(Section):
    """A whole training run. Build it with vigsp.config.load_config, not by hand."""

    run: RunConfig
    model: ModelConfig = Field(json_schema_extra=SHAPES_CHECKPOINT)
    data: DataConfig
    optim: OptimConfig
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    launch: LaunchConfig = Field(default_factory=LaunchConfig)

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        # Checks that span sections; each message names every key involved.
        problems = []
        if self.schedule.warmup_epochs >= self.run.epochs:
            problems.append(
                f"schedule.warmup_epochs ({self.schedule.warmup_epochs}) must be smaller than "
                f"run.epochs ({self.run.epochs})"
            )
        for key in ("warmup_lr", "min_lr"):
            value = getattr(self.schedule, key)
            if value > self.optim.lr:
                problems.append(f"schedule.{key} ({value}) must not exceed optim.lr ({self.optim.lr})")
        micro = self.deepspeed.micro_batch_per_rank
        if micro is not None and micro != self.data.batch_size:
            problems.append(
                f"deepspeed.micro_batch_per_rank ({micro}) differs from data.batch_size "
                f"({self.data.batch_size}); set only data.batch_size"
            )
        if self.data.classes is not None and len(self.data.classes) != self.model.num_classes:
            problems.append(
                f"data.classes lists {len(self.data.classes)} classes but model.num_classes is "
                f"{self.model.num_classes}"
            )
        if problems:
            raise ValueError("\n".join(problems))  # one problem per line; messages.py lists them
        return self
