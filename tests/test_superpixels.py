"""The C++ superpixel core against the plain NumPy reference, on random and real images."""

from __future__ import annotations

import numpy as np
import pytest

from tests.fixtures.images import library_jpegs, load_rgb
from vigsp import superpixels as sp
from vigsp.superpixels import graph_reference as ref


def random_compact_labels(rng: np.random.Generator, height: int, width: int, n: int) -> np.ndarray:
    """Random label maps: blocky regions plus noise, made compact. Labels need not be connected."""
    coarse = rng.integers(0, n, size=(max(1, height // 4), max(1, width // 4)))
    labels = np.kron(coarse, np.ones((4, 4), dtype=np.int64))[:height, :width]
    labels = np.pad(labels, ((0, height - labels.shape[0]), (0, width - labels.shape[1])), mode="edge")
    noise = rng.random((height, width)) < 0.1
    labels[noise] = rng.integers(0, n, size=int(noise.sum()))
    return np.unique(labels, return_inverse=True)[1].reshape(height, width).astype(np.int32)


def assert_graph_matches_reference(image: np.ndarray, graph: sp.SuperpixelGraph) -> None:
    labels = graph.labels
    np.testing.assert_array_equal(graph.pixel_mask, ref.pixel_mask_reference(labels))
    np.testing.assert_array_equal(graph.pixel_edges(), ref.pixel_edges_reference(labels))
    np.testing.assert_array_equal(graph.rag_edges, ref.rag_edges_reference(labels))
    expected = ref.node_features_reference(image, labels)
    # Integer-derived features are exact; Lab comes from cbrt in C++ vs NumPy, so allow rounding.
    np.testing.assert_array_equal(graph.features[:, :10], expected[:, :10])
    np.testing.assert_allclose(graph.features[:, 10:], expected[:, 10:], atol=1e-4, rtol=0)


@pytest.mark.parametrize("seed", range(6))
def test_graph_from_random_labels_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width = rng.integers(1, 90, size=2)
    n = int(rng.integers(1, 60))
    labels = random_compact_labels(rng, int(height), int(width), n)
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    assert_graph_matches_reference(image, sp.graph_from_labels(image, labels))


def test_graph_with_many_labels_uses_sorted_pairs_path() -> None:
    # Above 4096 nodes the core switches from a bitset to sort+unique: check that path too.
    rng = np.random.default_rng(7)
    labels = np.arange(100 * 60, dtype=np.int32).reshape(100, 60)
    labels = labels[:, rng.permutation(60)]
    image = rng.integers(0, 256, size=(100, 60, 3), dtype=np.uint8)
    assert_graph_matches_reference(image, sp.graph_from_labels(image, labels))


@pytest.mark.parametrize("width", [8224, 8225, 9000])
def test_graph_of_rows_too_wide_for_the_packed_colour_prefix(width: int) -> None:
    # build_graph sums run colours from a row prefix with 21-bit fields, exact for runs up to 8224
    # pixels of 255; wider rows take the per-pixel path. Row 0 is one saturated run of the width.
    rng = np.random.default_rng(width)
    labels = np.repeat(np.sort(rng.integers(0, 5, size=(3, 40)), axis=1), -(-width // 40), axis=1)[:, :width]
    labels[0] = 5
    labels = np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int32)
    image = np.full((3, width, 3), 255, dtype=np.uint8)
    image[1] = rng.integers(0, 256, size=(width, 3), dtype=np.uint8)
    assert_graph_matches_reference(image, sp.graph_from_labels(image, labels))


@pytest.mark.parametrize("path", library_jpegs(), ids=lambda p: p.name)
def test_slic_graph_on_real_images(path) -> None:
    image = load_rgb(path)[:300, :300].copy()
    graph = sp.slic_graph(image, n_segments=196)
    assert graph.labels.shape == image.shape[:2]
    assert graph.labels.min() == 0 and graph.labels.max() == graph.num_nodes - 1
    assert ref.is_each_label_connected(graph.labels)
    assert 0.5 * 196 <= graph.num_nodes <= 1.5 * 196
    assert_graph_matches_reference(image, graph)


def test_pillow_odd_jpegs_match_reference(pillow_images) -> None:
    from PIL import Image

    checked = 0
    for path in sorted(pillow_images.glob("*.jp*g")):
        try:
            image = load_rgb(path)
        except (OSError, Image.DecompressionBombError, SyntaxError):
            continue  # broken on purpose; vigsp data check covers those
        if min(image.shape[:2]) < 16:
            continue
        graph = sp.slic_graph(image, n_segments=64)
        assert ref.is_each_label_connected(graph.labels), path.name
        assert_graph_matches_reference(image, graph)
        checked += 1
    assert checked >= 10, f"only {checked} decodable Pillow JPEGs found in {pillow_images}"


@pytest.mark.parametrize("n_segments", [25, 100, 196, 400])
def test_slic_segment_count_near_request(n_segments: int) -> None:
    image = load_rgb(library_jpegs()[0])[:224, :224].copy()
    graph = sp.slic_graph(image, n_segments=n_segments)
    assert 0.6 * n_segments <= graph.num_nodes <= 1.3 * n_segments
    assert ref.is_each_label_connected(graph.labels)


@pytest.mark.parametrize("stride", [2, 3])
def test_subsampled_slic_is_connected_and_close_to_classic(stride: int) -> None:
    from skimage.segmentation import find_boundaries

    image = load_rgb(library_jpegs()[4])[:224, :224].copy()
    fast = sp.slic_graph(image, n_segments=196, subsample_stride=stride)
    assert ref.is_each_label_connected(fast.labels)
    assert 0.6 * 196 <= fast.num_nodes <= 1.3 * 196
    assert_graph_matches_reference(image, fast)
    classic = find_boundaries(sp.slic_labels(image), mode="thick")
    ours = find_boundaries(fast.labels, mode="thick")
    assert (classic & ours).sum() / classic.sum() > 0.6
    with pytest.raises(ValueError, match="subsample_stride"):
        sp.slic_graph(image, subsample_stride=0)


def test_slic_labels_are_deterministic_and_equal_graph_labels() -> None:
    image = load_rgb(library_jpegs()[3])[:200, :260].copy()
    a = sp.slic_labels(image)
    np.testing.assert_array_equal(a, sp.slic_labels(image))
    np.testing.assert_array_equal(a, sp.slic_graph(image).labels)


def test_slic_agrees_with_skimage_in_spirit() -> None:
    # Not the same algorithm to the bit (window size, init), but boundaries should mostly agree.
    from skimage.segmentation import find_boundaries, slic

    image = load_rgb(library_jpegs()[0])[:224, :224].copy()
    ours = find_boundaries(sp.slic_labels(image), mode="thick")
    theirs = find_boundaries(slic(image, n_segments=196, start_label=0), mode="thick")
    # Boundary recall of ours against skimage's (both thickened by one pixel).
    recall = (ours & theirs).sum() / theirs.sum()
    assert recall > 0.5


def test_grid_mode() -> None:
    image = np.random.default_rng(0).integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
    graph = sp.grid_graph(image, n_segments=196)
    assert graph.num_nodes == 196
    counts = graph.feature("count")
    assert counts.min() == counts.max() == 16 * 16
    # 14x14 grid: 2 * 14 * 13 adjacent cell pairs.
    assert len(graph.rag_edges) == 2 * 14 * 13
    assert_graph_matches_reference(image, graph)
    rect = sp.grid_graph(np.zeros((60, 90, 3), np.uint8), n_segments=54)
    assert rect.num_nodes == 54  # 6 x 9 cells follow the aspect ratio


def test_batch_equals_single_calls() -> None:
    images = [load_rgb(p)[:180, :240].copy() for p in library_jpegs()]
    batch = sp.slic_graph_batch(images, n_segments=100, num_threads=2)
    for image, graph in zip(images, batch, strict=True):
        single = sp.slic_graph(image, n_segments=100)
        for field in ("labels", "rag_edges", "features", "pixel_mask"):
            np.testing.assert_array_equal(getattr(graph, field), getattr(single, field))
    stacked = np.stack([im[:100, :100] for im in images])
    grids = sp.grid_graph_batch(stacked, n_segments=25)
    assert [g.num_nodes for g in grids] == [25] * len(images)


@pytest.mark.parametrize(
    ("image", "kwargs", "message"),
    [
        (np.zeros((32, 32, 3), np.float32), {}, "dtype uint8"),
        (np.zeros((32, 32), np.uint8), {}, "greyscale"),
        (np.zeros((32, 32, 1), np.uint8), {}, "shape (H, W, 3)"),
        (np.zeros((32, 32, 4), np.uint8), {}, "alpha"),
        (np.zeros((8, 8, 3), np.uint8), {"n_segments": 196}, "smaller than the 14x14 segment grid"),
        (np.zeros((32, 32, 3), np.uint8), {"n_segments": 0}, "n_segments must be positive"),
        (np.zeros((32, 32, 3), np.uint8), {"n_segments": -5}, "n_segments must be positive"),
        (np.zeros((32, 32, 3), np.uint8), {"compactness": 0.0}, "compactness"),
        (np.zeros((32, 32, 3), np.uint8), {"max_iter": 0}, "max_iter"),
        ([[1, 2, 3]], {}, "numpy array"),
    ],
)
def test_bad_input_raises_clear_value_error(image, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sp.slic_graph(image, **kwargs)


def test_bad_labels_raise_clear_value_error() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="label 1 is absent"):
        sp.graph_from_labels(image, np.array([[0, 2] * 2] * 4))
    with pytest.raises(ValueError, match=">= 0"):
        sp.graph_from_labels(image, np.full((4, 4), -1))
    with pytest.raises(ValueError, match="image's shape"):
        sp.graph_from_labels(image, np.zeros((3, 4), np.int32))
    with pytest.raises(ValueError, match="images\\[1\\]"):
        sp.slic_graph_batch([np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20), np.uint8)], n_segments=4)


def test_feature_lookup_by_name() -> None:
    graph = sp.grid_graph(np.zeros((20, 20, 3), np.uint8), n_segments=4)
    np.testing.assert_array_equal(graph.feature("count"), [100, 100, 100, 100])
    with pytest.raises(KeyError, match="centroid_y"):
        graph.feature("centroid")


def test_early_exit_when_converged_equals_running_all_iterations() -> None:
    # 4x4 blocks of distinct flat colours, one segment each: k-means settles in a few iterations,
    # after which the loop stops early (no pixel changed cluster). More iterations must not matter.
    rng = np.random.default_rng(3)
    colours = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    image = np.kron(colours, np.ones((16, 16, 1), dtype=np.uint8))
    blocks = np.kron(np.arange(16).reshape(4, 4), np.ones((16, 16), dtype=np.int32))
    runs = [sp.slic_labels(image, n_segments=16, max_iter=m) for m in (3, 10, 100)]
    for labels in runs:
        np.testing.assert_array_equal(labels, blocks)
    # On a real photo SLIC has not converged after one iteration: an early exit that fired too
    # soon would make these equal.
    photo = load_rgb(library_jpegs()[0])[:224, :224].copy()
    one, two, ten = (sp.slic_labels(photo, max_iter=m) for m in (1, 2, 10))
    assert not np.array_equal(one, two)
    assert not np.array_equal(two, ten)


@pytest.mark.parametrize("min_size_factor", [0.0, 0.5, 1.0])
def test_connectivity_merges_small_fragments_into_a_4_neighbour(min_size_factor: float) -> None:
    # Noisy image: k-means leaves many fragments; whatever the merge threshold, every final label
    # is one 4-connected region, labels are compact, and with a threshold no region is tiny
    # unless it could not be merged (the very first region of the raster scan).
    image = np.random.default_rng(5).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    graph = sp.slic_graph(image, n_segments=49, min_size_factor=min_size_factor)
    assert ref.is_each_label_connected(graph.labels)
    assert graph.labels.min() == 0 and graph.labels.max() == graph.num_nodes - 1
    counts = graph.feature("count")
    min_size = int(min_size_factor * 64 * 64 / 49)
    assert (counts[1:] >= min_size).all()
    assert_graph_matches_reference(image, graph)
