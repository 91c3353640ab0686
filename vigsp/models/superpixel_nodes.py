"""From per-pixel features and a superpixel label map to node embeddings for the ViG backbone.

* :func:`superpixel_pool`: mean and max of the pixel features of each superpixel (reduced over
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

    Pixels are reduced as rows of F channels (``[B*H*W, F]`` into ``[B*N, F]``; a view of
    channels-last maps): reducing whole rows is ~20x faster on CPU than scattering each
    channel's ``H*W`` plane, with the same sums and maxima bit for bit.
    """
    batch, channels = pixels.shape[:2]
    rows = _PixelRows.apply(pixels).to(torch.promote_types(pixels.dtype, torch.float32))  # [B*H*W, F]
    offsets = torch.arange(batch, device=labels.device).view(-1, 1) * num_nodes
    node = (labels.reshape(batch, -1).long() + offsets).reshape(-1)  # [B*H*W]: row of its node
    slots = batch * num_nodes
    sums = rows.new_zeros(slots, channels).index_add_(0, node, rows)
    counts = rows.new_zeros(slots).index_add_(0, node, rows.new_ones(()).expand(node.shape[0]))
    means = sums / counts.clamp(min=1).unsqueeze(1)
    maxes = _NodeMax.apply(rows, node, slots)
    return torch.cat([means, maxes], dim=1).view(batch, num_nodes, 2 * channels)


class _PixelRows(torch.autograd.Function):
    """``[B, F, H, W]`` -> ``[B*H*W, F]``, handing the gradient back in the maps' own memory
    format: the layers before pooling then run the backward kernels (and roundings) they would
    run without the row layout."""

    @staticmethod
    def forward(ctx, pixels: Tensor) -> Tensor:  # type: ignore[override]
        ctx.shape = pixels.shape
        ctx.channels_last = pixels.dim() == 4 and pixels.is_contiguous(memory_format=torch.channels_last)
        return pixels.permute(0, 2, 3, 1).reshape(-1, pixels.shape[1])

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        batch, channels, height, width = ctx.shape
        grad = grad.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        return grad.contiguous(memory_format=fmt)


class _NodeMax(torch.autograd.Function):
    """``[P, F]`` pixel rows -> ``[S, F]`` per-node channel maxima (0 for nodes without pixels).

    The gradient is exactly ``scatter_reduce(..., "amax", include_self=False)``'s, ties split
    evenly (tested bit for bit against it), but built from row gathers instead of its
    per-channel scatters, which made pooling the front end's most expensive step.
    """

    @staticmethod
    def forward(ctx, rows: Tensor, node: Tensor, slots: int) -> Tensor:  # type: ignore[override]
        index = node.view(-1, 1).expand(-1, rows.shape[1])
        maxes = rows.new_zeros(slots, rows.shape[1]).scatter_reduce_(
            0, index, rows, "amax", include_self=False
        )
        ctx.save_for_backward(rows, node, maxes)
        return maxes

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        rows, node, maxes = ctx.saved_tensors
        is_max = rows == maxes.index_select(0, node)
        # torch's formula also counts the (zero) initial slot as a tie when the max is exactly 0
        ties = (maxes == 0).to(grad.dtype).index_add_(0, node, is_max.to(grad.dtype))
        return is_max * (grad / ties).index_select(0, node), None, None


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
