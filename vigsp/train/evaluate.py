"""Top-1/top-5 and loss over the validation split, every sample counted once across ranks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vigsp.train.distributed import DistEnv, all_reduce_sum


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many rows have their label among the k highest logits, for each k (k capped at C)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [int(hits[:, : min(k, logits.shape[1])].any(dim=1).sum()) for k in ks]


@torch.no_grad()
def evaluate(
    module: nn.Module,
    batches: Iterable[Any],
    to_inputs: Callable[[Any], tuple[tuple[Tensor, ...], Tensor]],
    env: DistEnv,
) -> dict[str, float]:
    """Sums per rank first, one all-reduce after the loop: ranks may run different batch counts."""
    was_training = module.training
    module.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    try:
        for batch in batches:
            inputs, labels = to_inputs(batch)
            logits = module(*inputs).float()
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            c1, c5 = topk_correct(logits, labels)
            correct1, correct5, count = correct1 + c1, correct5 + c5, count + len(labels)
    finally:
        module.train(was_training)
    loss_sum, correct1, correct5, count = all_reduce_sum([loss_sum, correct1, correct5, count], env)
    return {
        "loss": loss_sum / max(count, 1),
        "top1": 100.0 * correct1 / max(count, 1),
        "top5": 100.0 * correct5 / max(count, 1),
        "count": count,
    }
