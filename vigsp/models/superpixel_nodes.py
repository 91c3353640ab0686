"""From per-pixel features and a superpixel label map to node embeddings for the ViG backbone.

* :func:`superpixel_pool`: mean and max of the pixel features of each superpixel (scatter over
  the label map), padded to N nodes.
* :class:`NodeEmbedding`: pooled features + the 13 core node features -> C channels, plus a
  positional encoding from Fourier features of the centroid (superpixels have no grid, so the
  patch model's learned per-position table does not apply).
* :func:`check_superpixel_inputs`: the shape/range checks that turn a bad batch into a clear error.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from vigsp.superpixels import FEATURE_NAMES  # the C++ core's node features, named once there

NUM_NODE_FEATURES = len(FEATURE_NAMES)
_CENTROID = [FEATURE_NAMES.index("centroid_y"), FEATURE_NAMES.index("centroid_x")]
_COUNT = FEATURE_NAMES.index("count")


def check_superpixel_inputs(images: Tensor, labels: Tensor, node_features: Tensor, node_mask: Tensor) -> None:
    """Raise ``ValueError`` naming the bad input. Value checks read back on the CPU only; on a GPU
    they are asynchronous asserts, so the forward never waits for the device."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    batch, _, height, width = images.shape
    if labels.shape != (batch, height, width):
        raise ValueError(f"labels must be [B, H, W] = {(batch, height, width)}, got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if node_mask.dim() != 2 or node_mask.shape[0] != batch or node_mask.dtype != torch.bool:
        raise ValueError(
            f"node_mask must be a [B, N] bool tensor, got {tuple(node_mask.shape)} {node_mask.dtype}"
        )
    num_nodes = node_mask.shape[1]
    if node_features.shape != (batch, num_nodes, NUM_NODE_FEATURES):
        raise ValueError(
            f"node_features must be [B, N, {NUM_NODE_FEATURES}] = {(batch, num_nodes, NUM_NODE_FEATURES)}, "
            f"got {tuple(node_features.shape)}"
        )
    lo, hi = labels.aminmax()
    flat = (
        labels.long().clamp(0, num_nodes - 1)
        + torch.arange(batch, device=labels.device).view(-1, 1, 1) * num_nodes
    )
    labels_valid = node_mask.reshape(-1)[flat.reshape(-1)].all()
    graphs_nonempty = node_mask.any(1).all()
    if labels.device.type != "cpu":
        # On an accelerator a readable check would wait for the device in every forward; these
        # fail at the next synchronisation instead (the data pipeline checks the same on the CPU).
        torch._assert_async((lo >= 0) & (hi < num_nodes) & labels_valid & graphs_nonempty)
        return
    lo, hi, labels_valid, graphs_nonempty = torch.stack(
        [lo.long(), hi.long(), labels_valid.long(), graphs_nonempty.long()]
    ).tolist()
    if lo < 0 or hi >= num_nodes:
        raise ValueError(
            f"superpixel labels must lie in [0, N={num_nodes}) (N = node_mask.shape[1], the padded node "
            f"count), got labels in [{lo}, {hi}]. Pad the nodes to at least max(label) + 1."
        )
    if not labels_valid:
        raise ValueError(
            "some pixels carry a label whose node_mask entry is False: every label must be a valid node"
        )
    if not graphs_nonempty:
        raise ValueError("an image in the batch has no valid node (node_mask row all False)")


def superpixel_pool(pixels: Tensor, labels: Tensor, num_nodes: int) -> Tensor:
    """Per-superpixel mean and max of ``[B, F, H, W]`` pixel features -> ``[B, N, 2F]``.

    Nodes without pixels (padding) get zeros. Computed in float32 even under autocast: sums and
    pixel counts of large superpixels would lose precision in 16-bit floats.
    """
    batch, channels = pixels.shape[:2]
    flat = pixels.flatten(2).to(torch.promote_types(pixels.dtype, torch.float32))  # [B, F, HW]
    index = labels.reshape(batch, 1, -1).long().expand(-1, channels, -1)
    sums = flat.new_zeros(batch, channels, num_nodes).scatter_add_(2, index, flat)
    counts = torch.zeros(batch, num_nodes, dtype=flat.dtype, device=flat.device)
    counts.scatter_add_(1, index[:, 0], torch.ones_like(flat[:, 0]))
    means = sums / counts.clamp(min=1).unsqueeze(1)
    maxes = flat.new_zeros(batch, channels, num_nodes).scatter_reduce(
        2, index, flat, "amax", include_self=False
    )
    return torch.cat([means, maxes], dim=1).transpose(1, 2)


def fourier_features(coords: Tensor, bands: int) -> Tensor:
    """``[M, 2]`` coordinates in (0, 1) -> ``[M, 4 * bands]`` sin/cos at frequencies pi * 2^i."""
    freqs = math.pi * 2.0 ** torch.arange(bands, device=coords.device, dtype=coords.dtype)
    angles = (coords.unsqueeze(-1) * freqs).flatten(1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class NodeEmbedding(nn.Module):
    """Packed pooled ``[M, P]`` + node features ``[M, 13]`` -> ``[M, C]``, plus a centroid encoding."""

    def __init__(self, pooled_channels: int, channels: int, fourier_bands: int = 8) -> None:
        super().__init__()
        self.fourier_bands = fourier_bands
        # Counts, Lab and [0, 1] coordinates live on very different scales: normalise per feature.
        self.feature_norm = nn.BatchNorm1d(NUM_NODE_FEATURES)
        self.proj = nn.Sequential(
            nn.Linear(pooled_channels + NUM_NODE_FEATURES, channels),
            nn.BatchNorm1d(channels),
            nn.GELU(),
            nn.Linear(channels, channels),
            nn.BatchNorm1d(channels),
        )
        self.pos = nn.Sequential(
            nn.Linear(4 * fourier_bands, channels),
            nn.GELU(),
            nn.Linear(channels, channels),
        )

    def forward(self, pooled: Tensor, node_features: Tensor) -> Tensor:
        # The weights' dtype (bf16 under DeepSpeed's bf16): pooling may hand back fp32 sums.
        dtype = self.feature_norm.weight.dtype
        pooled, feats = pooled.to(dtype), node_features.to(dtype)
        # log of the raw pixel count: area ratios matter, not absolute sizes
        feats = torch.cat(
            [feats[:, :_COUNT], feats[:, _COUNT : _COUNT + 1].clamp(min=1).log(), feats[:, _COUNT + 1 :]], 1
        )
        x = self.proj(torch.cat([pooled, self.feature_norm(feats)], dim=1))
        return x + self.pos(fourier_features(feats[:, _CENTROID], self.fourier_bands))
