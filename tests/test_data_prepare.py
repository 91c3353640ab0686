"""``vigsp data prepare fashion-mnist``: the real Debian package becomes a correct JPEG ImageFolder."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.datasets import fashion_mnist  # noqa: F401 (fixture)
from vigsp.cli import main
from vigsp.data.fashion_mnist import (
    CLASS_DIRS,
    DEFAULT_SOURCE,
    MARKER,
    PrepareResult,
    prepare_fashion_mnist,
)
from vigsp.data.idx import read_idx, read_images_and_labels
from vigsp.errors import UserError


def write_idx(path: Path, array: np.ndarray, magic: bytes | None = None, gz: bool = True) -> Path:
    header = magic or bytes([0, 0, 0x08, array.ndim])
    data = header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_source(folder: Path, n_train: int = 12, n_val: int = 6, side: int = 28) -> Path:
    """A small, valid Fashion-MNIST-shaped source: random images, labels cycling 0..9."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, side, side)))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


def test_prepare_from_debian_package(fashion_mnist: PrepareResult) -> None:  # noqa: F811
    out = fashion_mnist.out
    assert fashion_mnist.counts == {"train": 60000, "val": 10000}
    assert (out / "classes.txt").read_text().split() == list(CLASS_DIRS)
    for split, per_class in (("train", 6000), ("val", 1000)):
        folders = sorted(p.name for p in (out / split).iterdir())
        assert folders == sorted(CLASS_DIRS) == list(CLASS_DIRS)  # sorted order is the label order
        for name in folders:
            assert len(list((out / split / name).glob("*.jpg"))) == per_class

    # Every image sits in its label's folder and holds its own pixels (checked against the idx files).
    images, labels = read_images_and_labels(
        DEFAULT_SOURCE / "t10k-images-idx3-ubyte.gz", DEFAULT_SOURCE / "t10k-labels-idx1-ubyte.gz", 10
    )
    for i in range(0, 10000, 37):
        with Image.open(out / "val" / CLASS_DIRS[labels[i]] / f"{i:05d}.jpg") as jpeg:
            assert (jpeg.format, jpeg.mode, jpeg.size) == ("JPEG", "RGB", (28, 28))
            pixels = np.asarray(jpeg).astype(int)
        error = np.abs(pixels - images[i][..., None].astype(int))
        assert error.max() <= 12 and error.mean() <= 2.0, f"val image {i} differs from the idx file"


def test_prepare_again_leaves_a_complete_output_alone(fashion_mnist: PrepareResult) -> None:  # noqa: F811
    out = fashion_mnist.out
    sample = sorted((out / "train" / CLASS_DIRS[3]).iterdir())[:20]
    before = [p.stat().st_mtime_ns for p in sample]
    again = prepare_fashion_mnist(DEFAULT_SOURCE, out, progress=False)
    assert again.skipped and again.counts == fashion_mnist.counts
    assert [p.stat().st_mtime_ns for p in sample] == before
    with pytest.raises(UserError, match="size=28"):
        prepare_fashion_mnist(DEFAULT_SOURCE, out, size=32, progress=False)


def test_prepare_resizes_and_redoes_an_incomplete_output(tmp_path: Path) -> None:
    source = write_source(tmp_path / "src")
    out = tmp_path / "out"
    first = prepare_fashion_mnist(source, out, size=40, workers=1, progress=False)
    assert not first.skipped and first.counts == {"train": 12, "val": 6}
    image = out / "train" / CLASS_DIRS[5] / "00005.jpg"
    with Image.open(image) as jpeg:
        assert jpeg.size == (40, 40) and jpeg.mode == "RGB"
    # An interrupted run leaves no marker: the next run writes everything again.
    (out / MARKER).unlink()
    image.unlink()
    second = prepare_fashion_mnist(source, out, size=40, workers=1, progress=False)
    assert not second.skipped and image.is_file() and (out / MARKER).is_file()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("magic", "idx magic 0x00000903"),
        ("label", "label 12 at index 3"),
        ("truncated", "truncated or damaged"),
        ("count", "holds 12 images but"),
        ("gzip", "damaged gzip file"),
        ("missing", "has no t10k-labels-idx1-ubyte.gz"),
    ],
)
def test_prepare_rejects_bad_idx_files_naming_them(tmp_path: Path, damage: str, message: str) -> None:
    source = write_source(tmp_path / "src")
    images, labels = source / "t10k-images-idx3-ubyte.gz", source / "t10k-labels-idx1-ubyte.gz"
    bad = labels
    if damage == "magic":
        bad = write_idx(images, np.zeros((6, 28, 28)), magic=bytes([0, 0, 0x09, 3]))
    elif damage == "label":
        write_idx(labels, np.array([0, 1, 2, 12, 4, 5]))
    elif damage == "truncated":
        bad = images
        images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-100]))
    elif damage == "count":
        bad = source / "train-labels-idx1-ubyte.gz"
        write_idx(bad, np.arange(11) % 10)
    elif damage == "gzip":
        labels.write_bytes(labels.read_bytes()[:-5])
    elif damage == "missing":
        bad = source
        labels.unlink()
    with pytest.raises(UserError, match=message) as caught:
        prepare_fashion_mnist(source, tmp_path / "out", workers=1, progress=False)
    assert str(bad) in str(caught.value)


def test_read_idx_accepts_uncompressed_files(tmp_path: Path) -> None:
    array = np.arange(24).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "x-idx3-ubyte", array, gz=False), ndim=3), array)


def test_cli_prepare_reports_errors_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = write_source(tmp_path / "src")
    assert (
        main(["data", "prepare", "fashion-mnist", "--source", str(source), "--out", str(tmp_path / "o")]) == 0
    )
    assert "train 12, val 6 images) written" in capsys.readouterr().out
    (source / "train-images-idx3-ubyte.gz").unlink()
    status = main(["data", "prepare", "fashion-mnist", "--source", str(source), "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert status == 2 and "train-images-idx3-ubyte.gz" in err and "Traceback" not in err
