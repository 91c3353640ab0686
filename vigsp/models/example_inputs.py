"""Example batches for FLOP counting, benchmarks and tests.

Superpixel models need a label map and node features. When the superpixel core
(``vigsp.superpixels``) is importable we use it; otherwise :func:`grid_superpixels` builds a
regular grid of rectangular "superpixels" in NumPy with the exact core feature layout, except
the three Lab columns, which it leaves at zero (they only matter for accuracy, never for
shapes, FLOPs or timing).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from vigsp.models.superpixel_nodes import FEATURE_NAMES, NUM_NODE_FEATURES


def grid_labels(height: int, width: int, n_segments: int) -> np.ndarray:
    """``[H, W]`` int32 labels of a ``rows x cols`` grid with ``rows * cols <= n_segments``."""
    rows = max(1, int(np.sqrt(n_segments)))
    cols = max(1, n_segments // rows)
    ys = np.arange(height) * rows // height
    xs = np.arange(width) * cols // width
    return (ys[:, None] * cols + xs[None, :]).astype(np.int32)


def node_features_from_labels(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The core's 13 node features of ``labels`` on an ``HxWx3`` uint8 image (Lab left at 0)."""
    height, width = labels.shape
    n = int(labels.max()) + 1
    flat = labels.ravel()
    count = np.bincount(flat, minlength=n).astype(np.float64)
    ys, xs = np.divmod(np.arange(height * width), width)
    feats = np.zeros((n, NUM_NODE_FEATURES), np.float32)
    feats[:, 0] = count
    feats[:, 1] = (np.bincount(flat, ys, n) / count + 0.5) / height
    feats[:, 2] = (np.bincount(flat, xs, n) / count + 0.5) / width
    for col, values, scale, reduce in ((3, ys, height, np.minimum), (4, xs, width, np.minimum)):
        out = np.full(n, np.iinfo(np.int64).max)
        reduce.at(out, flat, values)
        feats[:, col] = out / scale
    for col, values, scale in ((5, ys, height), (6, xs, width)):
        out = np.full(n, -1)
        np.maximum.at(out, flat, values)
        feats[:, col] = (out + 1) / scale
    for c in range(3):
        feats[:, 7 + c] = np.bincount(flat, image[..., c].ravel().astype(np.float64), n) / count / 255.0
    return feats


def grid_superpixels(images: np.ndarray, n_segments: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[B, H, W, 3]`` uint8 -> per image ``(labels [H, W] int32, features [n, 13] float32)``."""
    labels = grid_labels(images.shape[1], images.shape[2], n_segments)
    return [(labels, node_features_from_labels(image, labels)) for image in images]


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


def core_superpixels(
    images: np.ndarray, method: str, n_segments: int
) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """The real core's graphs, or None while ``vigsp.superpixels`` is not available."""
    if importlib.util.find_spec("vigsp.superpixels") is None:
        return None
    try:
        from vigsp import superpixels as sp
    except ImportError:  # the native extension is not built
        return None
    if tuple(sp.FEATURE_NAMES) != FEATURE_NAMES:
        raise RuntimeError("vigsp.superpixels.FEATURE_NAMES changed: update vigsp.models.superpixel_nodes")
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
    images = torch.from_numpy(images_np).permute(0, 3, 1, 2).float().div(255.0)
    if not getattr(model, "needs_superpixels", False):
        return (images,)
    method = superpixel_method or model.superpixel_method
    graphs = core_superpixels(images_np, method, model.n_segments)
    if graphs is None:  # no core: grid stand-in
        graphs = grid_superpixels(images_np, model.n_segments)
    max_nodes = max(model.max_nodes, *(len(f) for _, f in graphs))
    labels, feats, mask = collate_superpixels(graphs, max_nodes)
    return images, labels, feats, mask
