"""``vigsp viz IMAGES... --out FILE.png``: images with their superpixels and graph, one panel each.

Each panel shows the image (resized and centre-cropped to --size, as evaluation sees it), the
superpixel boundaries (yellow), the node centroids (red) and the region-adjacency edges between
them (cyan), computed with the same core as training (vigsp.superpixels).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from vigsp.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files to render")
    parser.add_argument("--out", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--method", choices=("slic", "grid"), default="slic")
    parser.add_argument(
        "--n-segments", type=int, default=196, help="target number of superpixels (default 196)"
    )
    parser.add_argument("--compactness", type=float, default=10.0, help="SLIC colour/space trade-off")
    parser.add_argument(
        "--size", type=int, default=224, help="resize the shorter side to this and centre-crop; 0 = as is"
    )
    parser.add_argument("--no-edges", action="store_true", help="draw boundaries and centroids only")
    parser.add_argument("--columns", type=int, default=4, help="panels per row (default 4)")


def load_rgb(path: Path, size: int) -> np.ndarray:
    """HxWx3 uint8; with ``size`` > 0 the shorter side becomes ``size``, then a centred square crop."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if size > 0:
                scale = size / min(image.size)
                width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
                image = image.resize((width, height), Image.Resampling.BICUBIC)
                left, top = (width - size) // 2, (height - size) // 2
                image = image.crop((left, top, left + size, top + size))
            return np.asarray(image)
    except (OSError, UnidentifiedImageError) as err:
        raise UserError(f"cannot read {path}: {err}; check it with `vigsp data check {path}`") from err


def boundary_mask(pixel_mask: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour lies in another superpixel (from the pixel-graph bits)."""
    from vigsp.superpixels import SAME_DOWN, SAME_RIGHT

    height, width = pixel_mask.shape
    boundary = np.zeros((height, width), dtype=bool)
    boundary[:, :-1] |= (pixel_mask[:, :-1] & SAME_RIGHT) == 0
    boundary[:-1, :] |= (pixel_mask[:-1, :] & SAME_DOWN) == 0
    return boundary


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour carries another label."""
    boundary = np.zeros(labels.shape, dtype=bool)
    boundary[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    boundary[:-1, :] |= labels[:-1, :] != labels[1:, :]
    return boundary


# Panels are drawn at least this many pixels wide: a 28 px image is enlarged first, so its
# boundaries are thin lines between the enlarged pixels instead of covering a quarter of them.
DISPLAY_PX = 224


def render(
    images: list[np.ndarray], titles: list[str], graphs: list, out: Path, edges: bool = True, columns: int = 4
) -> None:
    """One panel per image: boundaries (yellow), centroids (red), adjacency (cyan). ``graphs`` are
    the core's ``SuperpixelGraph``s of the images (labels, features, rag_edges)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    from vigsp.superpixels import FEATURE_NAMES

    cy, cx = FEATURE_NAMES.index("centroid_y"), FEATURE_NAMES.index("centroid_x")
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title, graph in zip(axes.flat, images, titles, graphs, strict=False):
        height, width = image.shape[:2]
        scale = max(1, math.ceil(DISPLAY_PX / max(height, width)))
        shown = np.repeat(np.repeat(image, scale, 0), scale, 1)
        shown[label_boundaries(np.repeat(np.repeat(graph.labels, scale, 0), scale, 1))] = (255, 220, 0)
        ax.imshow(shown, interpolation="nearest")
        # Centroids are normalised as (mean + 0.5) / size; imshow puts pixel i's centre at i.
        ys = graph.features[:, cy] * height * scale - 0.5
        xs = graph.features[:, cx] * width * scale - 0.5
        if edges and len(graph.rag_edges):
            segments = np.stack(
                [np.stack([xs, ys], 1)[graph.rag_edges[:, 0]], np.stack([xs, ys], 1)[graph.rag_edges[:, 1]]],
                1,
            )
            ax.add_collection(LineCollection(segments, colors="cyan", linewidths=0.6, alpha=0.8))
        ax.scatter(xs, ys, s=6, c="red", zorder=3)
        ax.set_title(f"{title}\n{graph.num_nodes} nodes, {len(graph.rag_edges)} edges", fontsize=9)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)


def run(args: argparse.Namespace) -> int:
    from vigsp import superpixels

    if args.n_segments < 1:
        raise UserError(f"--n-segments must be at least 1, got {args.n_segments}")
    if args.out.suffix.lower() != ".png":
        raise UserError(f"--out {args.out} must be a .png file")
    images = [load_rgb(path, args.size) for path in args.images]
    if args.method == "slic":
        graphs = [superpixels.slic_graph(im, args.n_segments, args.compactness) for im in images]
    else:
        graphs = [superpixels.grid_graph(im, args.n_segments) for im in images]
    render(images, [path.name for path in args.images], graphs, args.out, not args.no_edges, args.columns)
    print(f"wrote {args.out} ({len(images)} image(s), {args.method}, n_segments={args.n_segments})")
    return 0
