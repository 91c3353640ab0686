"""The isotropic Vision GNN (ViG-Ti/S/B) as a backbone over masked node sets, and the patch model.

Follows the official ``vig_pytorch`` ``DeepGCN``: a stem of stride-2 3x3 convs to 1/16
resolution (196 patch nodes at 224 px), a learnable absolute position embedding (zero-init),
``depth`` x (Grapher + FFN) with k rising 9 -> 18 and dilation ``min(i // 4 + 1, N // 18)``,
average pooling and a 1024-wide conv head. Parameter counts match the published 7.1M / 22.7M
/ 86.8M (tested). The backbone takes any padded ``[B, C, N]`` node set with a ``[B, N]`` mask,
which is how ViG-SP feeds it superpixel nodes; the patch model is the all-valid case.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from vigsp.models.inputs import PATCH_MODEL_INPUTS
from vigsp.models.layers import FFN, Grapher, drop_path_schedule, kaiming_init_, knn_schedule
from vigsp.models.nodes import NodeLayout


class IsotropicViG(nn.Module):
    """``depth`` x (Grapher, FFN) at constant width, then masked mean pooling and the head."""

    def __init__(
        self,
        channels: int,
        depth: int,
        num_classes: int,
        k: int = 9,
        max_nodes: int = 196,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        head_hidden: int = 1024,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.knn, self.dilations = knn_schedule(depth, k, max_nodes)
        rates = drop_path_schedule(depth, drop_path_rate)
        self.blocks = nn.ModuleList(
            nn.ModuleList(
                [
                    Grapher(channels, self.knn[i], self.dilations[i], rates[i]),
                    FFN(channels, 4 * channels, rates[i]),
                ]
            )
            for i in range(depth)
        )
        self.head = nn.Sequential(
            nn.Linear(channels, head_hidden),
            nn.BatchNorm1d(head_hidden),
            nn.GELU(),
            nn.Dropout(drop_rate),
            nn.Linear(head_hidden, num_classes),
        )

    def forward_features(self, x: Tensor, layout: NodeLayout) -> Tensor:
        """Packed nodes ``[M, C]`` -> ``[M, C]``."""
        for grapher, ffn in self.blocks:
            x = ffn(grapher(x, layout), layout)
        return x

    def forward_head(self, x: Tensor, layout: NodeLayout) -> Tensor:
        """Packed nodes ``[M, C]`` -> logits ``[B, classes]`` via masked mean pooling."""
        return self.head(layout.mean(x))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Padded node set ``[B, C, N]`` (+ ``[B, N]`` bool mask; None = all valid) -> logits."""
        batch, channels, num_nodes = x.shape
        if channels != self.channels:
            raise ValueError(f"expected {self.channels} node channels, got {channels}")
        if mask is None:
            layout = NodeLayout.dense(batch, num_nodes, x.device)
        else:
            if mask.shape != (batch, num_nodes):
                raise ValueError(
                    f"mask shape {tuple(mask.shape)} does not match nodes [B, N]={batch, num_nodes}"
                )
            layout = NodeLayout.from_mask(mask)
        packed = layout.pack(x.transpose(1, 2))
        return self.forward_head(self.forward_features(packed, layout), layout)


class Stem(nn.Module):
    """Overlapping conv stem: ``downsamples`` stride-2 3x3 conv+BN+act, then a stride-1 3x3 conv+BN.

    With 4 downsamples the widths are 3 -> C/8 -> C/4 -> C/2 -> C -> C, exactly the official stem.
    """

    def __init__(self, channels: int, downsamples: int = 4, in_channels: int = 3) -> None:
        super().__init__()
        widths = [in_channels] + [channels // 2 ** (downsamples - 1 - i) for i in range(downsamples)]
        layers: list[nn.Module] = []
        for c_in, c_out in itertools.pairwise(widths):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.BatchNorm2d(c_out), nn.GELU()]
        layers += [nn.Conv2d(channels, channels, 3, stride=1, padding=1), nn.BatchNorm2d(channels)]
        self.convs = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(x)


class ViG(nn.Module):
    """Patch ViG: stem -> grid of patch nodes + position embedding -> :class:`IsotropicViG`."""

    needs_superpixels = False
    input_names = PATCH_MODEL_INPUTS  # the batch fields forward reads

    def __init__(
        self,
        channels: int = 192,
        depth: int = 12,
        num_classes: int = 1000,
        img_size: int = 224,
        stem_downsamples: int = 4,
        k: int = 9,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        head_hidden: int = 1024,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        stride = 2**stem_downsamples
        if img_size % stride:
            raise ValueError(f"img_size={img_size} must be a multiple of the stem stride {stride}")
        self.grid = img_size // stride
        self.num_nodes = self.grid * self.grid
        self.stem = Stem(channels, stem_downsamples)
        # Official: zero-initialised [1, C, 14, 14]; stored channel-last for the packed layout.
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_nodes, channels))
        self.backbone = IsotropicViG(
            channels, depth, num_classes, k, self.num_nodes, drop_path_rate, drop_rate, head_hidden
        )
        kaiming_init_(self)

    def forward(self, images: Tensor) -> Tensor:
        x = self.stem(images)
        batch, _, height, width = x.shape
        if height * width != self.num_nodes:
            raise ValueError(
                f"{type(self).__name__} was built for {self.img_size}px inputs ({self.grid}x{self.grid} "
                f"patches); got {tuple(images.shape[-2:])} -> {height}x{width}. Resize the images or "
                f"create the model with img_size={images.shape[-1]}."
            )
        x = x.flatten(2).transpose(1, 2) + self.pos_embed  # [B, N, C]
        layout = NodeLayout.dense(batch, self.num_nodes, x.device)
        x = self.backbone.forward_features(layout.pack(x), layout)
        return self.backbone.forward_head(x, layout)
