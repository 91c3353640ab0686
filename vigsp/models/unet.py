"""A small UNet giving per-pixel features at input resolution, cheap enough to sit in front of ViG.

Three encoder levels (full, 1/2, 1/4 resolution) with 3x3 convs, a 3x3 context conv at 1/4,
and a decoder of 1x1 convs over upsampled + skip features; the receptive field (~31 px) comes
from the encoder. Full-resolution work dominates on CPU, so the last decoder step applies its
1x1 conv to the coarse input *before* upsampling (the two commute: both are linear and bilinear
weights sum to 1) and adds the skip's own 1x1 conv, instead of concatenating at full size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vigsp.models.pointwise import PointwiseConv2d


def conv_bn_act(c_in: int, c_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    if kernel == 1 and stride == 1:
        conv: nn.Conv2d = PointwiseConv2d(c_in, c_out, bias=False)
    else:
        conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
    return nn.Sequential(
        conv,
        nn.BatchNorm2d(c_out),
        nn.SiLU(),  # ~3x cheaper than GELU on CPU; the full-resolution layers feel it
    )


class SmallUNet(nn.Module):
    def __init__(self, in_channels: int = 3, width: int = 16, out_channels: int = 32) -> None:
        super().__init__()
        self.enc1 = conv_bn_act(in_channels, width)
        self.enc2 = conv_bn_act(width, 2 * width, stride=2)
        self.enc3 = conv_bn_act(2 * width, 4 * width, stride=2)
        self.context = conv_bn_act(4 * width, 4 * width)
        self.dec2 = conv_bn_act(4 * width + 2 * width, 2 * width, kernel=1)
        self.dec1_coarse = PointwiseConv2d(2 * width, out_channels, bias=False)
        self.dec1_skip = PointwiseConv2d(width, out_channels, bias=False)
        self.dec1_norm = nn.Sequential(nn.BatchNorm2d(out_channels), nn.SiLU())

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.context(self.enc3(e2))
        d2 = self.dec2(torch.cat([_upsample_to(e3, e2), e2], dim=1))
        # == 1x1 conv of cat([upsample(d2), e1]), with the d2 half done at 1/2 resolution
        return self.dec1_norm(_upsample_to(self.dec1_coarse(d2), e1) + self.dec1_skip(e1))


def _upsample_to(x: Tensor, like: Tensor) -> Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
