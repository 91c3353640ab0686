"""A GCN on the superpixel-induced pixel graph: messages only between same-label 4-neighbours.

The graph is the one ``vigsp.superpixels.SuperpixelGraph.pixel_mask`` encodes (and
``pixel_edges()`` lists): pixel (y, x) is joined to (y, x+1) and (y+1, x) when they carry the
same superpixel label. Instead of gathering over an edge list we shift the whole feature map by
one pixel in each of the 4 directions and gate each shift by the same-label bit, which is the
same operator (tested against an edge-list loop) but runs as a handful of dense elementwise ops.

Propagation is Kipf & Welling's symmetric normalisation with self-loops,
``D^-1/2 (A + I) D^-1/2``, where D counts each pixel's same-label neighbours plus itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vigsp.models.pointwise import PointwiseConv2d


class SameLabelGraph:
    """The same-label 4-neighbour pixel graph of a ``[B, H, W]`` label map, ready to propagate."""

    def __init__(self, labels: Tensor, dtype: torch.dtype = torch.float32) -> None:
        if labels.dim() != 3:
            raise ValueError(f"labels must be [B, H, W], got {tuple(labels.shape)}")
        # right[b, 0, y, x]: edge (y, x)-(y, x+1); down[b, 0, y, x]: edge (y, x)-(y+1, x)
        self.right = (labels[:, :, 1:] == labels[:, :, :-1]).unsqueeze(1).to(dtype)
        self.down = (labels[:, 1:, :] == labels[:, :-1, :]).unsqueeze(1).to(dtype)
        degree = 1.0 + _spread(self.right, self.down)
        self.inv_sqrt_degree = degree.rsqrt()

    def propagate(self, x: Tensor) -> Tensor:
        """``D^-1/2 (A + I) D^-1/2 x`` for ``x`` of shape ``[B, C, H, W]`` (differentiable)."""
        return _Propagate.apply(x, self)

    @torch.no_grad()
    def apply_operator(self, x: Tensor) -> Tensor:
        scaled = x * self.inv_sqrt_degree
        out = scaled.clone()  # the self-loop
        # In-place gated adds on shifted views: no padded temporaries (this runs at full resolution).
        out[..., :, :-1].addcmul_(self.right, scaled[..., :, 1:])  # from the right neighbour
        out[..., :, 1:].addcmul_(self.right, scaled[..., :, :-1])  # from the left neighbour
        out[..., :-1, :].addcmul_(self.down, scaled[..., 1:, :])  # from below
        out[..., 1:, :].addcmul_(self.down, scaled[..., :-1, :])  # from above
        return out.mul_(self.inv_sqrt_degree)


class _Propagate(torch.autograd.Function):
    """The operator is linear and symmetric, so its backward is the operator itself.

    A custom Function saves nothing but the graph and skips autograd's copies of in-place views.
    """

    @staticmethod
    def forward(ctx, x: Tensor, graph: SameLabelGraph) -> Tensor:  # type: ignore[override]
        ctx.graph = graph
        return graph.apply_operator(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return ctx.graph.apply_operator(grad), None


def _spread(right: Tensor, down: Tensor) -> Tensor:
    """Per-pixel number of same-label neighbours from the right/down edge bits."""
    return F.pad(right, (0, 1)) + F.pad(right, (1, 0)) + F.pad(down, (0, 0, 0, 1)) + F.pad(down, (0, 0, 1, 0))


class PixelGCN(nn.Module):
    """``layers`` x residual GCN layers: ``x + SiLU(BN(W (Â x)))`` on the same-label pixel graph.

    SiLU rather than the backbone's GELU: at full resolution the activation is a visible cost,
    and on CPU SiLU's forward+backward is ~3x cheaper than GELU's (erf).
    """

    def __init__(self, channels: int, layers: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(PointwiseConv2d(channels, channels), nn.BatchNorm2d(channels), nn.SiLU())
            for _ in range(layers)
        )

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        graph = SameLabelGraph(labels, x.dtype)
        for layer in self.layers:
            x = x + layer(graph.propagate(x))
        return x
