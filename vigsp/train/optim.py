"""The ViG recipe's optimizer and schedule: AdamW without decay on norms/biases, warmup + cosine."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from vigsp.train.config import OptimConfig, ScheduleConfig


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict]:
    """Two groups as in timm: 1-D tensors (norm weights, biases) and position embeddings get no decay."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = param.ndim <= 1 or name.endswith(".bias") or "pos_embed" in name
        (no_decay if exempt and not decay_norm_and_bias else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig, lr: float) -> torch.optim.Optimizer:
    groups = parameter_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias)
    return torch.optim.AdamW(groups, lr=lr, betas=cfg.betas, eps=cfg.eps)


def warmup_cosine(
    total_steps: int, warmup_steps: int, peak_lr: float, warmup_lr: float, min_lr: float
) -> Callable[[int], float]:
    """The lr at optimizer step ``s`` divided by ``peak_lr`` (what LambdaLR multiplies by)."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            lr = warmup_lr + (peak_lr - warmup_lr) * step / warmup_steps
        else:
            progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
            lr = min_lr + 0.5 * (peak_lr - min_lr) * (1 + math.cos(math.pi * progress))
        return lr / peak_lr

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: ScheduleConfig,
    *,
    peak_lr: float,
    total_steps: int,
    steps_per_epoch: int,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-optimizer-step schedule; DeepSpeed steps it and stores it in its checkpoints."""
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
    factor = warmup_cosine(
        total_steps, warmup, peak_lr, min(cfg.warmup_lr, peak_lr), min(cfg.min_lr, peak_lr)
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
