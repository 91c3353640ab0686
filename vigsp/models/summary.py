"""Parameter and FLOP counts of registered models (for ``vigsp models`` and the benchmarks)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vigsp.models.example_inputs import example_inputs


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def flops_per_image(model: nn.Module, batch_size: int = 1) -> float:
    """Forward FLOPs per image (eval mode) as counted by ``torch.utils.flop_counter``.

    FlopCounterMode counts matmuls and convolutions, 2 FLOPs per multiply-add; the ViG paper's
    "FLOPs" are multiply-adds, so its ViG-Ti "1.3 G" corresponds to ~2.6 GFLOPs here.
    Superpixel models are measured on grid superpixels, i.e. at exactly ``n_segments`` nodes
    (SLIC's count varies per image); matmul FLOPs scale linearly with the node count.
    """
    was_training = model.training
    model.eval()
    args = example_inputs(model, batch_size, superpixel_method="grid")
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(*args)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / batch_size


def describe_nodes(model: nn.Module) -> str:
    if getattr(model, "needs_superpixels", False):
        return f"{model.n_segments} ({model.max_nodes})"
    return str(model.num_nodes)
