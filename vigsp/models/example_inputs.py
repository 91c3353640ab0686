"""Example batches for FLOP counting, benchmarks and tests: smooth random images, and for
superpixel models the label maps and node features of the superpixel core (``vigsp.superpixels``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from vigsp.models.superpixel_nodes import NUM_NODE_FEATURES


def collate_superpixels(
    graphs: Sequence[tuple[np.ndarray, np.ndarray]], max_nodes: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image ``(labels, features)`` -> ``labels [B,H,W]``, ``features [B,N,13]``, ``mask [B,N]``."""
    batch = len(graphs)
    feats = torch.zeros(batch, max_nodes, NUM_NODE_FEATURES)
    mask = torch.zeros(batch, max_nodes, dtype=torch.bool)
    for i, (_, f) in enumerate(graphs):
        if len(f) > max_nodes:
            raise ValueError(f"image {i} has {len(f)} superpixels, more than max_nodes={max_nodes}")
        feats[i, : len(f)] = torch.from_numpy(np.asarray(f, np.float32))
        mask[i, : len(f)] = True
    labels = torch.from_numpy(np.stack([np.asarray(lab, np.int64) for lab, _ in graphs]))
    return labels, feats, mask


def core_superpixels(images: np.ndarray, method: str, n_segments: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The superpixel core's ``(labels, features)`` per ``[H, W, 3]`` uint8 image."""
    from vigsp import superpixels as sp

    build = sp.slic_graph if method == "slic" else sp.grid_graph
    graphs = [build(np.ascontiguousarray(image), n_segments=n_segments) for image in images]
    return [(g.labels, g.features) for g in graphs]


def example_inputs(
    model: nn.Module,
    batch_size: int = 2,
    seed: int = 0,
    image_size: int | None = None,
    superpixel_method: str | None = None,
) -> tuple:
    """Positional arguments for ``model(*args)``: ``(images,)`` or ``(images, labels, features, mask)``.

    ``superpixel_method`` ("slic" or "grid") overrides the model's own, e.g. to time a SLIC model
    on exactly ``n_segments`` grid nodes.
    """
    size = image_size or model.img_size
    rng = np.random.default_rng(seed)
    # Smooth random images: blocky colour fields, so SLIC finds real regions rather than noise.
    coarse = rng.integers(0, 256, (batch_size, 8, 8, 3), dtype=np.uint8)
    images_np = np.ascontiguousarray(
        np.repeat(np.repeat(coarse, -(-size // 8), 1), -(-size // 8), 2)[:, :size, :size]
    )
    # contiguous NCHW, as the data pipeline hands them over (a permuted NHWC view would flatter
    # the convolutions, which prefer channels-last)
    images = torch.from_numpy(images_np).permute(0, 3, 1, 2).float().div(255.0).contiguous()
    if not getattr(model, "needs_superpixels", False):
        return (images,)
    method = superpixel_method or model.superpixel_method
    graphs = core_superpixels(images_np, method, model.n_segments)
    max_nodes = max(model.max_nodes, *(len(f) for _, f in graphs))
    labels, feats, mask = collate_superpixels(graphs, max_nodes)
    return images, labels, feats, mask
