"""GPU superpixel graph speed: the CUDA backend against the CPU core on every core, same run.

A batch of 256 224x224 crops of the JPEGs shipped in scikit-image and scikit-learn (repeated),
196 segments, SLIC + the whole graph. The GPU figure is wall time per batch on one stream with a
synchronisation at the end (inputs already on the device, outputs left there); the CPU figure is
``slic_graph_batch(num_threads=0)`` over the same batch. On a machine without a CUDA device it
says so and exits 0.

    python benchmarks/superpixels_gpu.py              # 20 timed batches
    python benchmarks/superpixels_gpu.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))

BATCH, SEGMENTS = 256, 196


def batch_of_images() -> np.ndarray:
    from superpixels import real_images  # the CPU benchmark's 224x224 crops

    images = real_images()
    return np.stack([images[i % len(images)] for i in range(BATCH)])


def time_gpu(images: np.ndarray, repeats: int, subsample_stride: int) -> float:
    """Median seconds per batch."""
    from vigsp import _native
    from vigsp.superpixels import gpu as spg

    device = _native.DeviceBuffer.from_numpy(images)

    def once() -> None:
        result = spg.slic_graph_batch_cuda(device, n_segments=SEGMENTS, subsample_stride=subsample_stride)
        result.num_edges.to_numpy()  # waits for the stream

    once()  # warm-up: module load, memory pools
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def time_cpu(images: np.ndarray, repeats: int, subsample_stride: int) -> float:
    from vigsp import superpixels as sp

    sp.slic_graph_batch(images[:16], n_segments=SEGMENTS, subsample_stride=subsample_stride)
    runs = []
    for _ in range(max(1, repeats // 4)):
        start = time.perf_counter()
        sp.slic_graph_batch(images, n_segments=SEGMENTS, subsample_stride=subsample_stride, num_threads=0)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    console = Console()

    from vigsp.superpixels import gpu as spg

    if not spg.CUDA_BUILT:
        console.print("vigsp was built without the CUDA backend (no nvcc at build time): nothing to time.")
        return 0
    if spg.cuda_device_count() == 0:
        console.print("No CUDA device here (vigsp._native.cuda_device_count() == 0): nothing to time.")
        return 0

    images = batch_of_images()
    table = Table(title=f"SLIC + graph, batch {BATCH} of 224x224, {SEGMENTS} segments")
    for column in ("backend", "subsample_stride", "ms / batch", "images / s", "GPU / CPU"):
        table.add_column(column, justify="right" if column != "backend" else "left")
    for stride in (1, 3):
        cpu = time_cpu(images, args.repeats, stride)
        gpu = time_gpu(images, args.repeats, stride)
        table.add_row(
            f"CPU core, {os.cpu_count()} threads",
            str(stride),
            f"{cpu * 1e3:.1f}",
            f"{BATCH / cpu:,.0f}",
            "1.00",
        )
        table.add_row(
            "CUDA backend", str(stride), f"{gpu * 1e3:.1f}", f"{BATCH / gpu:,.0f}", f"{cpu / gpu:.2f}"
        )
    console.print(table)
    console.print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
