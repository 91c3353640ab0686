"""The evaluation preprocessing without DALI: what ``vigsp predict`` and the MLflow model run.

Decode (Pillow: libjpeg-turbo, the library DALI's CPU decoder uses; EXIF orientation applied, as
DALI does), resize the shorter side to ``floor(image_size / eval_crop_fraction)``, centre-crop
``image_size`` (DALI's anchor rounding), build the superpixel graph with the C++ core
(``vigsp._native``, the code inside DALI's operator), normalise, and pad nodes and edges to the
model's capacity, as vigsp/data/pipelines.py does.

What equals the DALI eval pipeline and what does not (tests/test_preprocess.py measures it):
decoding is byte-identical, and so are images that need no resize (the quickstart's 28 px
Fashion-MNIST), their label maps and graphs. The resize is torch's antialiased bicubic (or
bilinear), not DALI's resampler: after a resize, pixels differ by 0.7 levels (of 255) on average at
most and by up to 30 in high-frequency detail, and 87-100 % of the neighbouring pixel pairs keep
their same/other-superpixel relation (Fashion-MNIST 28 -> 32, photographs -> 256 -> 224).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vigsp.data.batch import Batch, GraphCapacityError
from vigsp.data.config import DataConfig
from vigsp.errors import UserError

ImageSource = bytes | str | Path | np.ndarray


class UnreadableImageError(UserError):
    """An input that is not a decodable image; the message names it."""


def decode(source: ImageSource, name: str | None = None) -> np.ndarray:
    """HxWx3 uint8 RGB from encoded bytes, a path, or an array (HxW grey, HxWx3, HxWx4)."""
    if isinstance(source, np.ndarray):
        return _as_rgb_array(source, name or "array")
    from PIL import Image, ImageOps, UnidentifiedImageError

    label = name or (str(source) if not isinstance(source, bytes) else f"{len(source)} bytes")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return np.array(ImageOps.exif_transpose(image).convert("RGB"))
    except FileNotFoundError:
        raise UnreadableImageError(f"{label}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise UnreadableImageError(f"{label}: cannot be decoded as an image ({err})") from None
    except Image.DecompressionBombError as err:
        raise UnreadableImageError(f"{label}: {err}") from None


def _as_rgb_array(array: np.ndarray, name: str) -> np.ndarray:
    if array.dtype != np.uint8:
        raise UnreadableImageError(f"{name}: images must be uint8 arrays, not {array.dtype}")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return np.ascontiguousarray(array[:, :, :3])
    raise UnreadableImageError(f"{name}: expected an HxW or HxWx3 uint8 array, got shape {array.shape}")


@dataclass(frozen=True)
class Preprocessing:
    """The run's evaluation preprocessing (from its data config)."""

    data: DataConfig

    @property
    def resize_to(self) -> int:
        return math.floor(self.data.image_size / self.data.eval_crop_fraction)  # as the pipeline

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """The shorter side to ``resize_to`` (the other rounded), then the centred square crop."""
        h, w = rgb.shape[:2]
        shorter, size = self.resize_to, self.data.image_size
        out_h, out_w = (shorter, round(w * shorter / h)) if h <= w else (round(h * shorter / w), shorter)
        if (out_h, out_w) != (h, w):
            mode = "bicubic" if self.data.interpolation == "cubic" else "bilinear"
            pixels = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
            pixels = F.interpolate(
                pixels, size=(out_h, out_w), mode=mode, antialias=True, align_corners=False
            )
            rgb = pixels.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
        if min(out_h, out_w) < size:
            raise UserError(f"cannot crop {size} px from a {out_h}x{out_w} image")
        top, left = (out_h - size + 1) // 2, (out_w - size + 1) // 2  # DALI rounds the centre up
        return np.ascontiguousarray(rgb[top : top + size, left : left + size])

    def batch(self, images: Sequence[np.ndarray], names: Sequence[str], num_threads: int = 0) -> Batch:
        """The model's batch for prepared (cropped, uint8) images: what the DALI pipeline and the
        loader would hand it."""
        from vigsp import superpixels

        data = self.data
        stacked = np.stack(images)
        mean = np.asarray(data.mean, np.float32) * 255
        inv_std = 1 / (np.asarray(data.std, np.float32) * 255)
        normalized = (stacked.astype(np.float32) - mean) * inv_std
        n = len(images)
        batch = Batch(
            images=torch.from_numpy(np.ascontiguousarray(normalized.transpose(0, 3, 1, 2))),
            labels=torch.zeros(n, dtype=torch.int64),
            index=torch.arange(n),
        )
        sp = data.superpixel
        if sp is None:
            return batch
        if sp.method == "slic":
            graphs = superpixels.slic_graph_batch(
                list(images),
                sp.n_segments,
                sp.compactness,
                sp.max_iter,
                0.5,
                sp.subsample_stride,
                num_threads,
            )
        else:
            graphs = superpixels.grid_graph_batch(list(images), sp.n_segments, num_threads)
        nodes, edges = data.node_capacity, data.edge_capacity
        for graph, name in zip(graphs, names, strict=True):
            if graph.num_nodes > nodes:
                raise GraphCapacityError(
                    f"{name}: {graph.num_nodes} superpixels exceed data.max_nodes={nodes}"
                )
            if len(graph.rag_edges) > edges:
                raise GraphCapacityError(
                    f"{name}: {len(graph.rag_edges)} adjacency edges exceed data.max_edges={edges}"
                )
        counts = torch.tensor([g.num_nodes for g in graphs], dtype=torch.int32)
        features = torch.zeros(n, nodes, graphs[0].features.shape[1])
        edge_rows = torch.full((n, edges, 2), -1, dtype=torch.int32)
        for i, graph in enumerate(graphs):
            features[i, : graph.num_nodes] = torch.from_numpy(graph.features)
            edge_rows[i, : len(graph.rag_edges)] = torch.from_numpy(graph.rag_edges)
        batch.label_maps = torch.from_numpy(np.stack([g.labels for g in graphs]))
        batch.pixel_mask = torch.from_numpy(np.stack([g.pixel_mask for g in graphs]))
        batch.node_features = features
        batch.node_counts = counts
        batch.node_mask = torch.arange(nodes) < counts[:, None]
        batch.edges = edge_rows
        batch.edge_counts = torch.tensor([len(g.rag_edges) for g in graphs], dtype=torch.int32)
        return batch
