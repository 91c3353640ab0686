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


class LrSchedule:
    """The run's warmup-cosine schedule, laid out once in the optimizer steps of the layout (world
    size, batch, accumulation) the run started on. While the layout stays, step s is schedule step
    s (the same arithmetic as a plain per-step schedule). A resume on another layout, whose steps
    hold more or fewer images, maps its steps linearly onto the rest of the schedule, so the lr goes
    on from where it was and still reaches its end at the run's last step (``rebase``).

    Saved run-wide by the checkpointer; LambdaLR (which DeepSpeed saves) only counts the steps.
    """

    def __init__(
        self,
        cfg: ScheduleConfig,
        *,
        peak_lr: float,
        total_steps: int,
        steps_per_epoch: int,
        layout: list[int],
    ) -> None:
        self.peak_lr = peak_lr
        self.warmup_lr, self.min_lr = min(cfg.warmup_lr, peak_lr), min(cfg.min_lr, peak_lr)
        self.total = total_steps
        self.warmup = min(round(cfg.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
        self.layout = layout  # of this process
        self.saved_layout: list[int] | None = None  # of the process that saved the checkpoint
        self.anchors: list[tuple[int, float, float]] = []  # (step, schedule position, positions per step)

    def position(self, step: int) -> float:
        for start, at, rate in reversed(self.anchors):
            if step >= start:
                return at + (step - start) * rate
        return step

    def factor(self, step: int) -> float:
        """What LambdaLR multiplies the peak lr by at optimizer step ``step``."""
        shape = warmup_cosine(self.total, self.warmup, self.peak_lr, self.warmup_lr, self.min_lr)
        return shape(self.position(step))

    def rebase(self, step: int, total_steps: int) -> None:
        """From ``step`` on, ``total_steps - step`` steps cover the rest of the schedule."""
        at = self.position(step)
        self.anchors.append((step, at, (self.total - at) / max(1, total_steps - step)))

    def state_dict(self) -> dict[str, object]:
        return {"total": self.total, "warmup": self.warmup, "layout": self.layout, "anchors": self.anchors}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.warmup = state["total"], state["warmup"]
        self.saved_layout = list(state["layout"])
        self.anchors = [tuple(a) for a in state["anchors"]]


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: LrSchedule
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-optimizer-step schedule; DeepSpeed steps it and stores its step count in its checkpoints.
    A plain function, not the schedule object, so that LambdaLR's own state_dict leaves it out."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.factor(step))
