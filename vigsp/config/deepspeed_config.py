"""The DeepSpeed config dict for a run, and the batch/learning-rate arithmetic it implies.

Only batch sizes, ZeRO, precision and clipping go into DeepSpeed's config. The optimizer
and the learning-rate schedule are deliberately *not* described there: the engine builds
``torch.optim.AdamW`` itself (two parameter groups, so that norm weights and biases get no
weight decay, which DeepSpeed's config cannot express) and a warmup-cosine
``torch.optim.lr_scheduler.LambdaLR``, and hands both to ``deepspeed.initialize(optimizer=...,
lr_scheduler=...)``. Passing the scheduler there is what makes ``save_checkpoint`` /
``load_checkpoint`` store and restore it. A single definition of the schedule in our code also
keeps it identical with and without DeepSpeed.

``gradient_clipping`` is always written: DeepSpeed's default is 1.0 (not "off"), so leaving
it out would clip silently. ``null`` in our config becomes 0.0, which DeepSpeed treats as off.
"""

from __future__ import annotations

from typing import Any

from vigsp.config.schema import TrainConfig

__all__ = ["global_batch_size", "micro_batch_per_rank", "scaled_lr", "to_deepspeed_config"]

# DeepSpeed prints its own step/loss line every steps_per_print steps; our logger reports instead.
_NEVER = 2**31 - 1


def _check_world_size(world_size: int) -> None:
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")


def micro_batch_per_rank(cfg: TrainConfig) -> int:
    return cfg.deepspeed.micro_batch_per_rank or cfg.data.batch_size


def global_batch_size(cfg: TrainConfig, world_size: int) -> int:
    """Images per optimizer step over all ranks: micro batch x accumulation x data-parallel ranks."""
    _check_world_size(world_size)
    return micro_batch_per_rank(cfg) * cfg.deepspeed.gradient_accumulation_steps * world_size


def scaled_lr(cfg: TrainConfig, world_size: int) -> float:
    """Peak lr for the real global batch: linear scaling from optim.base_batch_size, if set."""
    if cfg.optim.base_batch_size is None:
        return cfg.optim.lr
    return cfg.optim.lr * global_batch_size(cfg, world_size) / cfg.optim.base_batch_size


def to_deepspeed_config(cfg: TrainConfig, world_size: int) -> dict[str, Any]:
    """The dict for ``deepspeed.initialize(config=...)`` with ``world_size`` data-parallel ranks."""
    ds = cfg.deepspeed
    return {
        "train_batch_size": global_batch_size(cfg, world_size),
        "train_micro_batch_size_per_gpu": micro_batch_per_rank(cfg),
        "gradient_accumulation_steps": ds.gradient_accumulation_steps,
        "gradient_clipping": float(ds.gradient_clipping or 0.0),
        "zero_optimization": {"stage": ds.zero_stage},
        "bf16": {"enabled": ds.bf16},
        "fp16": {"enabled": False},
        "steps_per_print": _NEVER,
        "wall_clock_breakdown": False,
    }
