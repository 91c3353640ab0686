"""A 1x1 convolution that runs as a matrix multiply on channels-last maps.

On CPU, oneDNN's 1x1 convolution forward+backward over channels-last maps costs about twice a
plain GEMM over the same ``[B*H*W, C]`` rows (measured at the tiny ViG-SP's 32 channels and 28
px), and the front end's full-resolution layers are mostly such convolutions. The parameters
stay a ``Conv2d``'s, so checkpoints and initialisation are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class PointwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(c_in, c_out, 1)`` computed as ``linear`` over pixel rows when ``x`` is channels-last."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if not x.is_contiguous(memory_format=torch.channels_last) or x.is_contiguous():
            return super().forward(x)  # NCHW (or a degenerate 1x1 map): the convolution itself
        rows = x.permute(0, 2, 3, 1)  # [B, H, W, C_in], a view
        weight = self.weight.view(self.out_channels, self.in_channels)
        return F.linear(rows, weight, self.bias).permute(0, 3, 1, 2)  # channels-last [B, C_out, H, W]
