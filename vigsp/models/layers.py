"""The Vision GNN building blocks (Han et al. 2022), on packed node sets.

Re-implemented from the paper and the official ``vig_pytorch`` code's behaviour: a Grapher
(fc -> dynamic dilated kNN max-relative graph convolution -> fc, plus residual) and an FFN.
The official code stores nodes as ``[B, C, N, 1]`` and uses 1x1 ``Conv2d`` + ``BatchNorm2d``;
here nodes are packed ``[M, C]`` rows (see :mod:`vigsp.models.nodes`), so the same maps are
``Linear`` + ``BatchNorm1d``, which have identical parameters and, for all-valid node sets,
identical outputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vigsp.models.knn import masked_knn
from vigsp.models.nodes import NodeLayout


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for whole graphs (samples), not single nodes."""

    def __init__(self, prob: float = 0.0) -> None:
        super().__init__()
        self.prob = float(prob)

    def forward(self, x: Tensor, layout: NodeLayout) -> Tensor:
        if self.prob == 0.0 or not self.training:
            return x
        keep = x.new_empty(layout.batch_size).bernoulli_(1.0 - self.prob) / (1.0 - self.prob)
        return x * keep[layout.batch_index].unsqueeze(1)

    def extra_repr(self) -> str:
        return f"prob={self.prob}"


class GroupedLinear(nn.Module):
    """A grouped 1x1 convolution on ``[M, C]`` rows (``Conv2d(..., 1, groups=g)`` of the original)."""

    def __init__(self, in_features: int, out_features: int, groups: int, bias: bool = True) -> None:
        super().__init__()
        if in_features % groups or out_features % groups:
            raise ValueError(f"features {in_features}->{out_features} must be divisible by groups={groups}")
        self.groups = groups
        # Same layout as the conv weight [out, in/groups] so parameter counts and init match.
        self.weight = nn.Parameter(torch.empty(out_features, in_features // groups))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        nn.init.kaiming_normal_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        rows = x.shape[0]
        weight = self.weight.view(self.groups, -1, self.weight.shape[1])  # [g, out/g, in/g]
        out = torch.bmm(x.view(rows, self.groups, -1).transpose(0, 1), weight.transpose(1, 2))
        out = out.transpose(0, 1).reshape(rows, -1)
        return out if self.bias is None else out + self.bias

    def extra_repr(self) -> str:
        out_f, in_g = self.weight.shape
        return f"in_features={in_g * self.groups}, out_features={out_f}, groups={self.groups}"


class MaxRelativeGraphConv(nn.Module):
    """Dynamic 'mr' graph convolution: ``[x_i, max_j (x_j - x_i)]`` -> grouped fc -> BN -> GELU.

    The neighbours j are the dilated kNN of the L2-normalised features (recomputed every call),
    restricted to valid nodes. Like the official code the two halves are interleaved channel by
    channel before the grouped conv, so each group sees both x and its max-relative feature.
    """

    def __init__(self, in_channels: int, out_channels: int, k: int, dilation: int, groups: int = 4) -> None:
        super().__init__()
        self.k = k
        self.dilation = dilation
        self.fc = GroupedLinear(2 * in_channels, out_channels, groups)
        self.norm = nn.BatchNorm1d(out_channels)
        self.act = nn.GELU()

    def forward(self, x: Tensor, layout: NodeLayout) -> Tensor:
        relative = max_relative(x, self.k, self.dilation, layout)
        interleaved = torch.stack((x, relative), dim=2).reshape(x.shape[0], -1)
        return self.act(self.norm(self.fc(interleaved)))

    def extra_repr(self) -> str:
        return f"k={self.k}, dilation={self.dilation}"


def max_relative(x: Tensor, k: int, dilation: int, layout: NodeLayout) -> Tensor:
    """``max_j (x_j - x_i)`` over each node's dilated kNN, channel by channel: ``[M, C]`` -> ``[M, C]``.

    ``max_j (x_j - x_i) = max_j x_j - x_i``, and the max's gradient flows to the arg-max
    neighbour only (as with ``torch.max`` in the original), so we find that neighbour per
    channel without autograd and differentiate a plain ``[M, C]`` gather. This avoids keeping
    the ``[M, k, C]`` neighbour tensor for backward and its k-times larger scatter.
    """
    with torch.no_grad():
        idx = masked_knn(layout.unpack(x), k, dilation, layout.mask)
        neighbours = layout.neighbours_to_packed(idx)  # [M, k]
        gathered = x.index_select(0, neighbours.reshape(-1)).view(*neighbours.shape, x.shape[1])
        # max(dim).indices: several times faster than argmax(dim) over a middle dim on CPU
        source = neighbours.gather(1, gathered.max(dim=1).indices)  # [M, C]: node holding the max
    return x.gather(0, source) - x


class Grapher(nn.Module):
    """fc(C->C)+BN -> graph conv (C->2C) -> fc(2C->C)+BN -> DropPath -> + residual."""

    def __init__(self, channels: int, k: int, dilation: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(channels, channels), nn.BatchNorm1d(channels))
        self.graph_conv = MaxRelativeGraphConv(channels, 2 * channels, k, dilation)
        self.fc2 = nn.Sequential(nn.Linear(2 * channels, channels), nn.BatchNorm1d(channels))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, layout: NodeLayout) -> Tensor:
        out = self.fc2(self.graph_conv(self.fc1(x), layout))
        return x + self.drop_path(out, layout)


class FFN(nn.Module):
    """fc(C->4C)+BN -> GELU -> fc(4C->C)+BN -> DropPath -> + residual."""

    def __init__(self, channels: int, hidden: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Sequential(nn.Linear(channels, hidden), nn.BatchNorm1d(hidden))
        self.act = nn.GELU()
        self.fc2 = nn.Sequential(nn.Linear(hidden, channels), nn.BatchNorm1d(channels))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, layout: NodeLayout) -> Tensor:
        return x + self.drop_path(self.fc2(self.act(self.fc1(x))), layout)


def knn_schedule(depth: int, k: int, max_nodes: int) -> tuple[list[int], list[int]]:
    """Official schedule: k rises linearly k..2k (truncated), dilation ``min(i // 4 + 1, N // max_k)``."""
    ks = [int(v) for v in torch.linspace(k, 2 * k, depth, device="cpu").tolist()]
    max_dilation = max(1, max_nodes // max(ks))
    return ks, [min(i // 4 + 1, max_dilation) for i in range(depth)]


def kaiming_init_(module: nn.Module) -> None:
    """The official init: Kaiming-normal weights and zero biases for every conv/fc."""
    for m in module.modules():
        if isinstance(m, nn.Linear | nn.Conv2d | GroupedLinear):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def drop_path_schedule(depth: int, rate: float) -> list[float]:
    """Stochastic depth rises linearly from 0 at the first block to ``rate`` at the last."""
    if depth == 1:
        return [0.0]
    return [rate * i / (depth - 1) for i in range(depth)]


__all__ = [
    "FFN",
    "DropPath",
    "Grapher",
    "GroupedLinear",
    "MaxRelativeGraphConv",
    "drop_path_schedule",
    "kaiming_init_",
    "knn_schedule",
]
