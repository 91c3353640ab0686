"""ViG-SP: a Vision GNN whose nodes are superpixels instead of square patches.

images -> small UNet (per-pixel features) -> GCN on each superpixel's own pixel graph ->
mean/max per superpixel -> node embedding + centroid positional encoding -> padded node set
with mask -> the same isotropic ViG backbone as the patch model (kNN, BatchNorm and pooling
all see only the valid nodes).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.profiler import record_function

from vigsp.models.inputs import SUPERPIXEL_MODEL_INPUTS
from vigsp.models.layers import kaiming_init_
from vigsp.models.nodes import NodeLayout
from vigsp.models.pixel_gcn import PixelGCN
from vigsp.models.superpixel_nodes import NodeEmbedding, check_superpixel_inputs, superpixel_pool
from vigsp.models.unet import SmallUNet
from vigsp.models.vig import IsotropicViG


class ViGSP(nn.Module):
    """``forward(images [B,3,H,W], label_maps [B,H,W], node_features [B,N,13], node_mask [B,N]) -> logits``.

    ``label_maps`` are the superpixel core's compact ids (0..n-1 per image); row ``i`` of
    ``node_features``/``node_mask`` is superpixel ``i``. ``superpixel_method``, ``n_segments``
    and ``max_nodes`` tell the data pipeline how to build and pad the graphs; the model itself
    accepts any padding ``N >= max(label) + 1``.
    """

    needs_superpixels = True
    input_names = SUPERPIXEL_MODEL_INPUTS  # forward's keywords

    def __init__(
        self,
        channels: int = 192,
        depth: int = 12,
        num_classes: int = 1000,
        img_size: int = 224,
        n_segments: int = 196,
        max_nodes: int = 256,
        superpixel_method: Literal["slic", "grid"] = "slic",
        unet_width: int = 8,
        pixel_channels: int = 16,
        gcn_layers: int = 2,
        fourier_bands: int = 8,
        k: int = 9,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        head_hidden: int = 1024,
    ) -> None:
        super().__init__()
        if superpixel_method not in ("slic", "grid"):
            raise ValueError(f"superpixel_method must be 'slic' or 'grid', got {superpixel_method!r}")
        self.img_size = img_size
        self.n_segments = n_segments
        self.max_nodes = max_nodes
        self.superpixel_method = superpixel_method
        self.unet = SmallUNet(3, unet_width, pixel_channels)
        self.pixel_gcn = PixelGCN(pixel_channels, gcn_layers)
        self.node_embed = NodeEmbedding(2 * pixel_channels, channels, fourier_bands)
        self.backbone = IsotropicViG(
            channels, depth, num_classes, k, max_nodes, drop_path_rate, drop_rate, head_hidden
        )
        kaiming_init_(self)

    def forward(self, images: Tensor, label_maps: Tensor, node_features: Tensor, node_mask: Tensor) -> Tensor:
        check_superpixel_inputs(images, label_maps, node_features, node_mask)
        layout = NodeLayout.from_mask(node_mask)
        # Named ranges: the profiler (benchmarks/models.py) reports the forward time of each stage.
        with record_function("vigsp.unet"):
            # Channels-last all through the front end: oneDNN's convolutions, the pointwise
            # layers' GEMMs and the pooling's pixel rows all prefer it (the pipeline hands NCHW).
            pixels = self.unet(images.contiguous(memory_format=torch.channels_last))
        with record_function("vigsp.pixel_gcn"):
            pixels = self.pixel_gcn(pixels, label_maps)
        with record_function("vigsp.pool_embed"):
            pooled = superpixel_pool(pixels, label_maps, layout.num_nodes)  # [B, N, 2F]
            x = self.node_embed(layout.pack(pooled), layout.pack(node_features))
        with record_function("vigsp.backbone"):
            x = self.backbone.forward_features(x, layout)
            return self.backbone.forward_head(x, layout)
