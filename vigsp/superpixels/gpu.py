"""SLIC superpixels and the superpixel graph for whole batches on a CUDA GPU (``vigsp._native``).

Inputs are device arrays: anything with ``__cuda_array_interface__`` (a torch CUDA tensor, a CuPy
array, or ``DeviceBuffer.from_numpy(array)``), shaped (B, H, W, 3) uint8. Work is queued on a CUDA
stream and the call returns without waiting for it; results come back as device arrays of the
input's kind (torch in, torch out; CuPy in, CuPy out; otherwise ``DeviceBuffer``).

The GPU mirrors the CPU core (``vigsp.superpixels``) step by step and is designed to give the same
labels bit for bit; the documented tolerance is ``LABEL_TOLERANCE`` (share of pixels whose label
differs), and graph parts of the same label map equal the CPU's exactly (see README "CUDA backend").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from vigsp import _native
from vigsp.superpixels import SuperpixelGraph

CUDA_BUILT: bool = bool(_native.cuda_built)
# Share of pixels whose SLIC label may differ between GPU and CPU on one image. The design target
# is 0: every step is bit-identical (see csrc/cuda/slic_kernels.cuh); the margin covers a float
# tie resolved differently, which would move a few pixels between two clusters.
LABEL_TOLERANCE: float = 0.005

DeviceBuffer: Any = getattr(_native, "DeviceBuffer", None)


def cuda_device_count() -> int:
    """Number of usable CUDA devices; 0 without a driver, a GPU, or a CUDA build. Never raises."""
    return int(_native.cuda_device_count())


def cuda_available() -> bool:
    return CUDA_BUILT and cuda_device_count() > 0


def _stream_of(images: Any, stream: int | None) -> int | None:
    """The caller's stream, else torch's current stream for a torch tensor (its natural stream)."""
    if stream is not None:
        return int(stream)
    if type(images).__module__.startswith("torch") and getattr(images, "is_cuda", False):
        import torch

        return int(torch.cuda.current_stream(images.device).cuda_stream)
    return None


def _like(buffer: Any, images: Any) -> Any:
    """Wraps a DeviceBuffer as the input's array kind (zero-copy; the wrapper keeps it alive)."""
    module = type(images).__module__
    if module.startswith("torch"):
        import torch

        return torch.as_tensor(buffer, device=images.device)
    if module.startswith("cupy"):
        import cupy

        return cupy.asarray(buffer)
    return buffer


def to_numpy(array: Any) -> np.ndarray:
    """A device array (torch, CuPy, DeviceBuffer) or a NumPy array as NumPy, copying as needed."""
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "to_numpy") and DeviceBuffer is not None and isinstance(array, DeviceBuffer):
        return array.to_numpy()
    if type(array).__module__.startswith("torch"):
        return array.detach().cpu().numpy()
    if hasattr(array, "get"):  # CuPy
        return array.get()
    raise TypeError(f"cannot copy {type(array).__name__} to NumPy")


@dataclass(frozen=True)
class GpuGraphBatch:
    """A batch's superpixels and graphs on the device, padded to the batch's capacities.

    labels:     (B, H, W) int32, compact ids 0..num_nodes[i]-1.
    pixel_mask: (B, H, W) uint8, bits ``SAME_RIGHT`` / ``SAME_DOWN`` as in ``SuperpixelGraph``.
    features:   (B, Nmax, 13) float32; rows at or past num_nodes[i] are zero.
    rag_edges:  (B, Emax, 2) int32, sorted unique (i < j); pairs at or past num_edges[i] are -1.
    num_nodes:  (B,) int32;  num_edges: (B,) int64;  status: (B,) int32, 0 where all went well.
    stream:     the CUDA stream (int handle) the work was queued on.
    """

    labels: Any
    pixel_mask: Any
    features: Any
    rag_edges: Any
    num_nodes: Any
    num_edges: Any
    status: Any
    stream: int

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to_host(self) -> list[SuperpixelGraph]:
        """Copies to NumPy (waiting for the stream) and cuts each sample to its true sizes."""
        status = to_numpy(self.status)
        if np.any(status != 0):
            bad = int(np.flatnonzero(status)[0])
            raise RuntimeError(f"CUDA superpixel graph failed on sample {bad} (status {int(status[bad])})")
        labels, mask = to_numpy(self.labels), to_numpy(self.pixel_mask)
        features, edges = to_numpy(self.features), to_numpy(self.rag_edges)
        nodes, num_edges = to_numpy(self.num_nodes), to_numpy(self.num_edges)
        return [
            SuperpixelGraph(
                labels=labels[i],
                rag_edges=edges[i, : int(num_edges[i])],
                features=features[i, : int(nodes[i])],
                pixel_mask=mask[i],
            )
            for i in range(len(labels))
        ]


def _wrap(parts: dict[str, Any], images: Any) -> GpuGraphBatch:
    names = ("labels", "pixel_mask", "features", "rag_edges", "num_nodes", "num_edges", "status")
    return GpuGraphBatch(**{n: _like(parts[n], images) for n in names}, stream=int(parts["stream"]))


def slic_graph_batch_cuda(
    images: Any,
    n_segments: int = 196,
    compactness: float = 10.0,
    max_iter: int = 10,
    min_size_factor: float = 0.5,
    subsample_stride: int = 1,
    stream: int | None = None,
) -> GpuGraphBatch:
    """SLIC superpixels and their graph for a (B, H, W, 3) uint8 device array, on the GPU.

    Same parameters and meanings as ``vigsp.superpixels.slic_graph_batch``. ``stream`` is a
    ``cudaStream_t`` as an int (default: torch's current stream for torch input, else the input's
    ``__cuda_array_interface__`` stream, else the legacy default stream). Raises RuntimeError when
    no CUDA device is available and ValueError for bad input.
    """
    parts = _native.cuda_slic_graph_batch(
        images,
        "slic",
        n_segments,
        compactness,
        max_iter,
        min_size_factor,
        subsample_stride,
        _stream_of(images, stream),
    )
    return _wrap(parts, images)


def grid_graph_batch_cuda(images: Any, n_segments: int = 196, stream: int | None = None) -> GpuGraphBatch:
    """Square-ish grid cells (ViG-SP-Grid) and their graph for a device batch, on the GPU."""
    parts = _native.cuda_slic_graph_batch(
        images, "grid", n_segments, 10.0, 1, 0.5, 1, _stream_of(images, stream)
    )
    return _wrap(parts, images)


def graph_from_labels_cuda(images: Any, labels: Any, stream: int | None = None) -> GpuGraphBatch:
    """The graph of given compact label maps ((B, H, W) int32 on the device), on the GPU.

    Unlike the other calls it waits for the stream (to size the result from the labels and to
    raise ValueError on a label map that is not compact).
    """
    return _wrap(_native.cuda_graph_from_labels(images, labels, _stream_of(images, stream)), images)
