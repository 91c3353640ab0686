"""The C++ SLIC against the plain NumPy SLIC (vigsp.superpixels.slic_reference): equal labels, bit for bit.

The reference is the classic cluster-by-cluster loop with the core's arithmetic; the core adds
row sweeps, chunked vector passes in another candidate order, incremental sums and run-based
connectivity. Equal labels on real and random images mean none of those changed a result.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.images import library_jpegs, load_rgb
from vigsp import superpixels as sp
from vigsp.superpixels.slic_reference import slic_reference

# (crop size, SLIC settings): wide windows (16+ pixels per grid step, the core's reordered
# passes), narrow ones, subsampled sweeps, other compactness and merge thresholds.
SETTINGS = [
    ((224, 224), {}),
    ((224, 224), {"subsample_stride": 3}),
    ((96, 128), {"n_segments": 25}),
    ((97, 97), {"n_segments": 100, "compactness": 20.0, "min_size_factor": 0.3}),
    ((60, 45), {"n_segments": 40, "subsample_stride": 2, "max_iter": 7}),
    ((150, 150), {"n_segments": 600, "max_iter": 4, "compactness": 2.0}),
]


def crop(path, size: tuple[int, int]) -> np.ndarray:
    image = load_rgb(path)
    return np.ascontiguousarray(image[: size[0], : size[1]])


@pytest.mark.parametrize("path", library_jpegs(), ids=lambda p: p.name)
@pytest.mark.parametrize(("size", "settings"), SETTINGS, ids=[str(s) for s in SETTINGS])
def test_labels_equal_reference_on_real_images(path, size, settings) -> None:
    image = crop(path, size)
    np.testing.assert_array_equal(sp.slic_labels(image, **settings), slic_reference(image, **settings))


@pytest.mark.parametrize("seed", range(4))
def test_labels_equal_reference_on_random_images(seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(20, 90, size=2))
    image = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    if seed % 2:  # smooth gradients plus noise: near-ties in colour, unlike pure noise
        ramp = np.linspace(0, 255, width)[None, :, None] + rng.normal(0, 4, size=(height, width, 3))
        image = np.clip(ramp, 0, 255).astype(np.uint8)
    settings = {"n_segments": int(rng.integers(4, 60)), "subsample_stride": 1 + seed % 3}
    np.testing.assert_array_equal(sp.slic_labels(image, **settings), slic_reference(image, **settings))


def test_labels_equal_reference_at_fashion_mnist_size() -> None:
    # Grey 28x28 images with 49 segments, as the quickstart feeds them (4-pixel grid steps).
    for path in library_jpegs():
        with Image.open(path) as im:
            grey = np.asarray(im.convert("L").resize((28, 28), Image.BILINEAR))
        image = np.repeat(grey[:, :, None], 3, axis=2)
        np.testing.assert_array_equal(
            sp.slic_labels(image, n_segments=49), slic_reference(image, n_segments=49)
        )


def test_reference_is_sensitive_enough_to_catch_a_change() -> None:
    # Guards the comparisons above against agreeing trivially: a 1 % change of compactness, or
    # one iteration less, must change the reference's labels on a real image.
    image = crop(library_jpegs()[0], (224, 224))
    labels = sp.slic_labels(image)
    assert not np.array_equal(slic_reference(image, compactness=10.1), labels)
    assert not np.array_equal(slic_reference(image, max_iter=9), labels)


@pytest.mark.parametrize(("box", "n_segments"), [((165, 200, 97), 25), ((50, 100, 400), 400)])
def test_labels_equal_reference_where_no_window_covers_some_pixels(box, n_segments) -> None:
    # On these astronaut crops some centres drift so far that a few border pixels lie in no
    # window for an iteration; they keep their cluster. (A tie rule that let the inf-distance
    # padding of a window win there was caught by exactly these cases.)
    import skimage.data

    top, left, size = box
    image = np.ascontiguousarray(skimage.data.astronaut()[top : top + size, left : left + size])
    expected = slic_reference(image, n_segments=n_segments)
    np.testing.assert_array_equal(sp.slic_labels(image, n_segments=n_segments), expected)
