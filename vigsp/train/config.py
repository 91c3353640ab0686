"""The engine's config sections: the run, the optimizer and its schedule, DeepSpeed, checkpoints.

Fields marked SHAPES_CHECKPOINT change a checkpoint's layout, so a resume refuses them changed.
Imports pydantic only: `vigsp.config` assembles these without importing the engine.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from vigsp.config.section import SHAPES_CHECKPOINT, Section

__all__ = ["CheckpointConfig", "DeepSpeedSection", "OptimConfig", "RunConfig", "ScheduleConfig"]

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
    record_samples: bool = Field(
        False,
        description="write samples/rank_NNNNN.csv: the training-split indices each rank trained at each "
        "step, to audit the data order (an elastic resume's, say); cut back to the checkpoint on resume",
    )

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


class OptimConfig(Section):
    name: Literal["adamw"] = Field(
        "adamw",
        description="optimizer; torch.optim.AdamW built by the engine",
        json_schema_extra=SHAPES_CHECKPOINT,
    )
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

    zero_stage: Literal[0, 1, 2] = Field(
        0,
        description="ZeRO stage: 1 shards optimizer state, 2 also grads",
        json_schema_extra=SHAPES_CHECKPOINT,
    )
    bf16: bool = Field(
        False,
        description="bfloat16 mixed precision (fp32 master weights)",
        json_schema_extra=SHAPES_CHECKPOINT,
    )
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
    lease_timeout_s: float = Field(
        300.0,
        gt=0,
        description="a run directory whose training stopped renewing its lease (heartbeat every "
        "tenth of this) for this long on another host counts as abandoned and is taken over; on the "
        "same host a dead pid is taken over at once",
    )
    resume: Literal["auto", "never"] | Path = Field(
        "auto",
        description="auto: continue from the newest checkpoint of this run if any; never: start fresh; "
        "a path: continue from that checkpoint directory",
    )
