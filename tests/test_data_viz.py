"""``vigsp viz``: a PNG of images with their superpixels and graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.fixtures.images import pillow_images  # noqa: F401 (fixture)
from vigsp import superpixels
from vigsp.cli import main
from vigsp.viz import boundary_mask, load_rgb


def test_viz_writes_a_png_panel_per_image(pillow_images: Path, tmp_path: Path, capsys) -> None:  # noqa: F811
    out = tmp_path / "figs" / "sp.png"
    images = [str(pillow_images / "flower.jpg"), str(pillow_images / "hopper.jpg")]
    assert main(["viz", *images, "--out", str(out), "--n-segments", "60", "--size", "96"]) == 0
    assert "2 image(s), slic, n_segments=60" in capsys.readouterr().out
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == (800, 400)  # 2 panels of 4 x 4 inches at 100 dpi
        # the boundaries are drawn: the overlay's yellow is present
        assert (np.abs(np.asarray(png.convert("RGB")).astype(int) - (255, 220, 0)).sum(-1) < 30).any()


def test_boundary_mask_matches_label_changes(pillow_images: Path) -> None:  # noqa: F811
    image = load_rgb(pillow_images / "flower.jpg", 64)
    assert image.shape == (64, 64, 3)
    graph = superpixels.slic_graph(image, 30)
    labels = graph.labels
    expected = np.zeros(labels.shape, dtype=bool)
    expected[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    expected[:-1, :] |= labels[:-1, :] != labels[1:, :]
    assert np.array_equal(boundary_mask(graph.pixel_mask), expected) and expected.any()


def test_viz_unreadable_image_is_a_user_error(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    assert main(["viz", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "vigsp data check" in err


def test_viz_grid_method(pillow_images: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "grid.png"
    assert main(["viz", str(pillow_images / "hopper.jpg"), "--out", str(out), "--method", "grid"]) == 0
    assert out.stat().st_size > 0
