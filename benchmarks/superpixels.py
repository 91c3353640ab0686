"""Superpixel graph creation speed: vigsp's C++ core and DALI op against skimage and NumPy.

Everything runs on one core, per 224x224 image with about 196 segments, on real JPEGs shipped
inside scikit-image and scikit-learn. Each figure is a ratio against anchors measured in the
same run (skimage's slic) and against the seed's reported 2 ms per image for its C++ graph.

    python benchmarks/superpixels.py            # full run (about a minute)
    python benchmarks/superpixels.py --quick    # fewer repeats

fast-slic rows appear when it is installed (it needs Cython and no build isolation):
    pip install cython && pip install --no-build-isolation fast-slic
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

# One core for every row, including libraries that would otherwise start thread pools.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

SEED_CPP_GRAPH_MS = 2.0  # the seed's "C/C++ binding" figure for graph creation
SIZE, SEGMENTS = 224, 196


def real_images() -> list[np.ndarray]:
    """224x224 RGB crops of the JPEGs that scikit-image and scikit-learn ship."""
    import skimage
    import sklearn.datasets
    from PIL import Image

    files = [
        Path(skimage.__file__).parent / "data" / n
        for n in ("rocket.jpg", "retina.jpg", "hubble_deep_field.jpg")
    ]
    files += sorted((Path(sklearn.datasets.__file__).parent / "images").glob("*.jpg"))
    images = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB")
            scale = SIZE / min(im.size)
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BILINEAR)
            left, top = (im.width - SIZE) // 2, (im.height - SIZE) // 2
            images.append(np.asarray(im.crop((left, top, left + SIZE, top + SIZE))).copy())
    return images


def per_image_ms(fn: Callable[[np.ndarray], object], images: list[np.ndarray], repeats: int) -> float:
    """Median over repeats of the mean time per image, in ms."""
    fn(images[0])  # warm up caches and lazy initialisation
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        for image in images:
            fn(image)
        runs.append((time.perf_counter() - start) / len(images) * 1e3)
    return statistics.median(runs)


def dali_op_ms(images: list[np.ndarray], repeats: int) -> float:
    """Per-image time of the DALI operator in a 1-thread CPU pipeline, minus the same pipeline without it."""
    from nvidia.dali import fn, pipeline_def

    from vigsp.superpixels import dali as dali_plugin

    batch = [images[i % len(images)] for i in range(32)]

    def build(with_op: bool):
        @pipeline_def(batch_size=len(batch), num_threads=1, device_id=None, prefetch_queue_depth=1)
        def pipe():
            x = fn.external_source(source=lambda: batch, layout="HWC", batch=True)
            if with_op:
                return tuple(dali_plugin.superpixel_graph(x, n_segments=SEGMENTS))
            return x

        p = pipe()
        p.build()
        return p

    def time_pipeline(p) -> float:
        p.run()
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            p.run()
            runs.append((time.perf_counter() - start) / len(batch) * 1e3)
        return statistics.median(runs)

    return time_pipeline(build(True)) - time_pipeline(build(False))


def explained_variation(image: np.ndarray, labels: np.ndarray) -> float:
    """Share of the image's RGB variance that the superpixel means explain (1 = every pixel equals
    its superpixel's mean): a segmentation quality measure that needs no ground truth."""
    pixels = image.reshape(-1, 3).astype(np.float64)
    flat = labels.ravel()
    counts = np.bincount(flat)
    means = (
        np.stack([np.bincount(flat, pixels[:, c]) for c in range(3)], axis=1) / np.maximum(counts, 1)[:, None]
    )
    residual = ((pixels - means[flat]) ** 2).sum()
    return float(1.0 - residual / ((pixels - pixels.mean(axis=0)) ** 2).sum())


Row = tuple[str, float, "Callable[[np.ndarray], np.ndarray] | None"]  # name, ms, labels of an image


def fast_slic_rows(images: list[np.ndarray], repeats: int) -> list[Row]:
    """fast-slic on one thread, with its default subsample_stride=3 and with 1 (classic), if installed."""
    try:
        from fast_slic import Slic
        from fast_slic.avx2 import SlicAvx2
    except ImportError:
        return []
    rows: list[Row] = []
    for name, cls, stride in (
        ("fast-slic (portable)", Slic, 3),
        ("fast-slic AVX2", SlicAvx2, 3),
        ("fast-slic AVX2", SlicAvx2, 1),
    ):

        def run(im: np.ndarray, cls=cls, stride=stride) -> np.ndarray:
            slic = cls(num_components=SEGMENTS, compactness=10, num_threads=1, subsample_stride=stride)
            return slic.iterate(im)

        rows.append((f"{name}, labels only, stride {stride}", per_image_ms(run, images, repeats), run))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    args = parser.parse_args()
    # skimage moved ±25 % between runs as a median of 3 passes: the anchor gets 7.
    repeats_fast, repeats_slow = (5, 1) if args.quick else (30, 7)

    from skimage import graph as skgraph
    from skimage.segmentation import slic as skimage_slic

    from vigsp import superpixels as sp
    from vigsp.superpixels import graph_reference as ref

    images = real_images()
    labels = {id(im): sp.slic_labels(im, SEGMENTS) for im in images}

    def numpy_graph(im: np.ndarray) -> None:
        lab = labels[id(im)]
        ref.pixel_mask_reference(lab)
        ref.rag_edges_reference(lab)
        ref.node_features_reference(im, lab)

    def sk_slic(im: np.ndarray) -> np.ndarray:
        return skimage_slic(im, n_segments=SEGMENTS, start_label=0)

    def vigsp_slic(**kwargs: int) -> Callable[[np.ndarray], np.ndarray]:
        return lambda im: sp.slic_labels(im, SEGMENTS, **kwargs)

    skimage_ms = per_image_ms(sk_slic, images, repeats_slow)
    slow, fast, fastest = repeats_slow, repeats_fast, repeats_fast * 10
    rows: list[Row] = [
        ("skimage slic (labels only)", skimage_ms, sk_slic),
        (
            "skimage rag_mean_color (graph from labels)",
            per_image_ms(lambda im: skgraph.rag_mean_color(im, labels[id(im)]), images, slow),
            None,
        ),
        ("NumPy reference graph (from labels)", per_image_ms(numpy_graph, images, slow), None),
        (
            "vigsp graph from labels (a+b+c)",
            per_image_ms(lambda im: sp.graph_from_labels(im, labels[id(im)]), images, fastest),
            None,
        ),
        ("vigsp SLIC labels", per_image_ms(vigsp_slic(), images, fast), vigsp_slic()),
        (
            "vigsp SLIC + graph",
            per_image_ms(lambda im: sp.slic_graph(im, SEGMENTS), images, fast),
            vigsp_slic(),
        ),
        *fast_slic_rows(images, fast),
        (
            "vigsp SLIC + graph, stride 3 (as fast-slic)",
            per_image_ms(lambda im: sp.slic_graph(im, SEGMENTS, subsample_stride=3), images, fast),
            vigsp_slic(subsample_stride=3),
        ),
        (
            "vigsp SLIC + graph, max_iter 5",
            per_image_ms(lambda im: sp.slic_graph(im, SEGMENTS, max_iter=5), images, fast),
            vigsp_slic(max_iter=5),
        ),
        (
            "vigsp grid + graph (ViG-SP-Grid)",
            per_image_ms(lambda im: sp.grid_graph(im, SEGMENTS), images, fastest),
            lambda im: sp.grid_graph(im, SEGMENTS).labels,
        ),
        ("vigsp DALI op, SLIC + graph (1 thread)", dali_op_ms(images, fast), vigsp_slic()),
    ]

    table = Table(title=f"Superpixel graph per {SIZE}x{SIZE} image, ~{SEGMENTS} segments, 1 core")
    table.add_column("implementation")
    table.add_column("ms / image", justify="right")
    table.add_column("x faster than skimage slic", justify="right")
    table.add_column("x faster than seed C++ (2 ms)", justify="right")
    table.add_column("segments", justify="right")
    table.add_column("explained variation", justify="right")
    for name, ms, segment in rows:
        quality = ["", ""]
        if segment is not None:
            maps = [segment(im) for im in images]
            counts = [int(m.max()) + 1 for m in maps]
            ev = statistics.mean(explained_variation(im, m) for im, m in zip(images, maps, strict=True))
            quality = [f"{min(counts)}-{max(counts)}", f"{ev:.3f}"]
        table.add_row(name, f"{ms:.3f}", f"{skimage_ms / ms:.1f}", f"{SEED_CPP_GRAPH_MS / ms:.2f}", *quality)
    console = Console(width=180)
    console.print(table)
    console.print(
        f"{len(images)} real images; explained variation = 1 - (RGB variance within superpixels) / "
        "(RGB variance of the image), averaged over them. "
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}."
    )


if __name__ == "__main__":
    main()
