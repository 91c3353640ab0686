"""The schema of a training run: one pydantic section per concern, unknown keys rejected.

Every section forbids extra keys so that a typo (``optim.lrr``) is an error instead of
a silently ignored setting. Field descriptions double as the reference documentation
(``vigsp config show --keys``). Units are part of the name or the description.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from vigsp.data.config import AugmentationConfig, DataConfig, RandAugmentConfig, SuperpixelConfig

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
    "SuperpixelConfig",
    "TrackingConfig",
    "TrainConfig",
    "slurm_time_to_minutes",
]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, defaults are validated too."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class RunConfig(Section):
    name: str = Field(
        description="run name; names the run directory and the MLflow run. Defaults to the config's "
        "path under configs/ (imagenet100/vig_ti.yaml -> imagenet100-vig_ti)"
    )
    output_dir: Path = Field(Path("runs"), description="root under which <name>/ holds checkpoints and logs")
    seed: int = Field(0, ge=0, description="global seed (model init, data order unless data.seed is set)")
    epochs: int = Field(ge=1, description="number of passes over the training set")
    max_steps: int | None = Field(
        None, ge=1, description="stop after this many optimizer steps (smoke tests); null = run all epochs"
    )
    log_every: int = Field(50, ge=1, description="log training metrics every N optimizer steps")
    eval_every: int = Field(1, ge=1, description="evaluate on the validation set every N epochs")

    @property
    def directory(self) -> Path:
        """The run directory, ``output_dir/name``, as an absolute path (the one place it is formed)."""
        return (Path(self.output_dir) / self.name).resolve()

    @field_validator("name")
    @classmethod
    def _filesystem_safe(cls, value: str) -> str:
        if not _SAFE_NAME.match(value):
            raise ValueError(
                f"run name {value!r} names a directory: use letters, digits, '.', '_' and '-' only, "
                "starting with a letter or digit"
            )
        return value


class ModelConfig(Section):
    name: str = Field(description="registered model name (see `vigsp models`)")
    num_classes: int = Field(ge=2, description="classifier outputs")
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0, description="stochastic depth rate of the last block")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments for vigsp.models.create_model(name, ...)"
    )


# The data section is the DALI pipelines' own config (vigsp.data.config); compat.py names the
# data fields that change tensor shapes (INCOMPATIBLE_KEYS): keep that list in step.


class OptimConfig(Section):
    name: Literal["adamw"] = Field("adamw", description="optimizer; torch.optim.AdamW built by the engine")
    lr: float = Field(gt=0, description="peak learning rate at base_batch_size (see there)")
    base_batch_size: int | None = Field(
        None,
        ge=1,
        description="global batch that lr is quoted for; the engine scales lr linearly to the real "
        "global batch. null = use lr as is",
    )
    weight_decay: float = Field(0.05, ge=0, description="decoupled weight decay")
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    decay_norm_and_bias: bool = Field(
        False, description="false: no weight decay on normalisation weights and biases (1-D params)"
    )
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="cross-entropy label smoothing")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="per-step decay of an EMA copy of the weights; null = no EMA"
    )


class ScheduleConfig(Section):
    """Linear warmup from warmup_lr to the (scaled) peak lr, then cosine down to min_lr, per step."""

    warmup_epochs: float = Field(0.0, ge=0, description="linear warmup length; fractions allowed")
    warmup_lr: float = Field(0.0, ge=0, description="learning rate at step 0")
    min_lr: float = Field(0.0, ge=0, description="learning rate at the end of the cosine")


class DeepSpeedSection(Section):
    """What goes into the DeepSpeed config dict (see deepspeed_config.py); optimizer/scheduler do not."""

    zero_stage: Literal[0, 1, 2] = Field(0, description="ZeRO stage: 1 shards optimizer state, 2 also grads")
    bf16: bool = Field(False, description="bfloat16 mixed precision (fp32 master weights)")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro batches per optimizer step")
    gradient_clipping: float | None = Field(
        None,
        ge=0,
        description="max global gradient norm; null or 0 = no clipping. Always written to the DeepSpeed "
        "config, whose own default (1.0) would otherwise clip silently",
    )
    micro_batch_per_rank: int | None = Field(
        None, ge=1, description="null = data.batch_size; if set it must equal data.batch_size"
    )


class CheckpointConfig(Section):
    every_n_steps: int = Field(1000, ge=1, description="save a checkpoint every N optimizer steps")
    keep_last: int = Field(3, ge=1, description="keep the K most recent step checkpoints")
    keep_best: bool = Field(True, description="also keep the checkpoint with the best validation top-1")
    resume: Literal["auto", "never"] | Path = Field(
        "auto",
        description="auto: continue from the newest checkpoint of this run if any; never: start fresh; "
        "a path: continue from that checkpoint directory",
    )


class TrackingConfig(Section):
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; null = $MLFLOW_TRACKING_URI, else the embedded sqlite store "
        "./mlruns.db in the working directory",
    )
    experiment_name: str = Field("vigsp", min_length=1, description="MLflow experiment")


# Slurm --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def slurm_time_to_minutes(value: int | str) -> int:
    """Minutes in a Slurm time limit (rounded up), e.g. ``"1-12:00:00"`` -> 2160."""
    if isinstance(value, int):
        if value < 1:
            raise ValueError("a time limit in minutes must be at least 1")
        return value
    match = _SLURM_TIME.match(value.strip())
    if not match:
        raise ValueError(
            f"{value!r} is not a Slurm time limit; use minutes (90), H:M:S (01:30:00) or D-H:M:S (1-12:00:00)"
        )
    days, first, second, third = match.groups()
    if days is not None:  # D-H, D-H:M, D-H:M:S
        seconds = int(days) * 86400 + int(first) * 3600 + int(second or 0) * 60 + int(third or 0)
    elif third is not None:  # H:M:S
        seconds = int(first) * 3600 + int(second) * 60 + int(third)
    elif second is not None:  # M:S
        seconds = int(first) * 60 + int(second)
    else:  # M
        seconds = int(first) * 60
    if seconds < 60:
        raise ValueError(f"time limit {value!r} is under a minute")
    return math.ceil(seconds / 60)


class LaunchConfig(Section):
    """Slurm resources for `vigsp submit` (one rank per GPU, or tasks_per_node ranks on CPU)."""

    nodes: int = Field(1, ge=1)
    gpus_per_node: int = Field(1, ge=0, description="0 = CPU-only ranks")
    tasks_per_node: int | None = Field(None, ge=1, description="ranks per node; null = gpus_per_node (>= 1)")
    partition: str | None = None
    time: int | str = Field("24:00:00", description="wall-clock limit per job: minutes or [D-]H:M:S")
    account: str | None = None
    qos: str | None = None
    constraint: str | None = Field(None, description="sbatch --constraint, e.g. 'h100|a100'")
    mem: str | None = Field(None, description="memory per node, e.g. '200G'; null = cluster default")
    cpus_per_task: int | None = Field(None, ge=1)
    signal_delay_s: int = Field(120, ge=0, description="USR2 this many seconds before the time limit")
    max_num_timeout: int = Field(20, ge=0, description="how many times a timed-out job is requeued")
    extra_sbatch: dict[str, str | int | bool] = Field(
        default_factory=dict, description="more sbatch options, e.g. {reservation: foo, exclusive: true}"
    )

    @field_validator("time")
    @classmethod
    def _slurm_time(cls, value: int | str) -> int | str:
        slurm_time_to_minutes(value)
        return value

    @field_validator("mem")
    @classmethod
    def _slurm_mem(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d+[KMGT]?", value):
            raise ValueError(f"{value!r} is not a Slurm memory size; use e.g. 64G or 200000M")
        return value

    @property
    def ranks_per_node(self) -> int:
        return self.tasks_per_node or max(self.gpus_per_node, 1)

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node

    @property
    def timeout_min(self) -> int:
        return slurm_time_to_minutes(self.time)


class TrainConfig(Section):
    """A whole training run. Build it with vigsp.config.load_config, not by hand."""

    run: RunConfig
    model: ModelConfig
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
