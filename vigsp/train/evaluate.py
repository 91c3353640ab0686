"""Top-1/top-5 and loss over the validation split, every sample counted once across ranks."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vigsp.train.distributed import DistEnv, all_reduce_sum


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """How many rows have their label among the k highest logits, for each k (k capped at C);
    0-d tensors on the logits' device, so counting needs no host sync."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [hits[:, : min(k, logits.shape[1])].any(dim=1).sum() for k in ks]


@torch.no_grad()
def evaluate(
    module: nn.Module,
    batches: Iterable[Any],
    to_inputs: Callable[[Any], tuple[dict[str, Tensor], Tensor]],
    env: DistEnv,
) -> dict[str, float]:
    """Sums per rank on the device, read back once with one all-reduce after the loop: ranks may
    run different batch counts. Loss sums are float64, like the Python floats they replace."""
    was_training = module.training
    module.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=env.device)  # loss, top-1, top-5, count
    try:
        for batch in batches:
            inputs, labels = to_inputs(batch)
            logits = module(**inputs).float()
            loss = F.cross_entropy(logits, labels, reduction="sum").double()
            c1, c5 = topk_correct(logits, labels)
            sums += torch.stack([loss, c1.double(), c5.double(), loss.new_tensor(len(labels))])
    finally:
        module.train(was_training)
    loss_sum, correct1, correct5, count = all_reduce_sum(sums, env)
    return {
        "loss": loss_sum / max(count, 1),
        "top1": 100.0 * correct1 / max(count, 1),
        "top5": 100.0 * correct5 / max(count, 1),
        "count": count,
    }
