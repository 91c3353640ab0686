"""``vigsp data check`` on Pillow's odd and broken JPEGs, plus a few made here, against DALI itself."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.fixtures.datasets import fashion_mnist  # noqa: F401 (fixture)
from tests.fixtures.images import pillow_images  # noqa: F401 (fixture)
from vigsp.cli import main
from vigsp.data.config import DataConfig
from vigsp.data.fashion_mnist import PrepareResult
from vigsp.data.loader import TrainLoader

pytestmark = pytest.mark.dali


def dali_decodes(path: Path) -> bool:
    """The reference: a training-style pipeline (file reader + CPU decoder) on this one file."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def one_file():
        encoded, _ = fn.readers.file(files=[str(path)])
        return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)

    try:
        pipe = one_file()
        pipe.build()
        pipe.run()
        return True
    except RuntimeError:
        return False


@pytest.fixture(scope="module")
def odd_folder(pillow_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """Pillow's .jpg test images, plus: a text file, a cut-off JPEG, a PNG and a CMYK image named .jpg."""
    folder = tmp_path_factory.mktemp("odd") / "images"
    folder.mkdir()
    for source in sorted(pillow_images.glob("*.jpg")):
        shutil.copy(source, folder)
    (folder / "made_text.jpg").write_text("not an image\n")
    flower = (pillow_images / "flower.jpg").read_bytes()
    (folder / "made_cut.jpg").write_bytes(flower[: len(flower) // 3])
    rgb = Image.open(pillow_images / "hopper.jpg").convert("RGB")
    rgb.save(folder / "made_png.jpg", format="PNG")
    rgb.convert("CMYK").save(folder / "made_cmyk.jpg", format="JPEG")
    (folder / "README.txt").write_text("not checked: not an image extension\n")
    return folder


def reported(output: str) -> dict[str, tuple[str, str]]:
    """file name -> (severity, kind), from the report's per-file lines (a file may have several)."""
    found: dict[str, list[tuple[str, str]]] = {}
    for severity, kind, name in re.findall(r"^(error|warning)\s+(\S+)\s+(\S+?):", output, flags=re.M):
        found.setdefault(name, []).append((severity, kind))
    return found


def test_check_names_each_bad_file(odd_folder: Path, capsys: pytest.CaptureFixture) -> None:
    status = main(["data", "check", str(odd_folder), "--quiet", "--workers", "2"])
    out = capsys.readouterr().out
    found = reported(out)
    images = sorted(p for p in odd_folder.glob("*.jpg"))
    assert f"checked {len(images)} image(s)" in out and "1 non-image file(s) ignored" in out

    # Errors are exactly the files that DALI's decoder cannot read: what would stop training.
    undecodable = {p.name for p in images if not dali_decodes(p)}
    errors = {name for name, issues in found.items() if any(sev == "error" for sev, _ in issues)}
    assert errors == undecodable
    assert {"truncated_jpeg.jpg", "junk_jpeg_header.jpg", "made_text.jpg", "made_cut.jpg"} <= errors
    assert status == 1

    assert ("error", "truncated") in found["truncated_jpeg.jpg"]
    assert ("error", "undecodable") in found["junk_jpeg_header.jpg"]  # Pillow reads it, DALI does not
    assert ("error", "not_an_image") in found["made_text.jpg"]
    assert ("warning", "not_jpeg") in found["made_png.jpg"]
    for name in ("pil_sample_cmyk.jpg", "made_cmyk.jpg"):
        assert ("warning", "cmyk") in found[name]
    assert ("warning", "greyscale") in found["hopper_gray.jpg"]
    # tiny: under 16 pixels on a side, by Pillow's reading of every decodable file
    tiny = set()
    for path in images:
        if path.name not in undecodable:
            try:
                with Image.open(path) as image:
                    if min(image.size) < 16:
                        tiny.add(path.name)
            except OSError:
                pass
    assert tiny and tiny == {name for name, issues in found.items() if ("warning", "tiny") in issues}
    assert "hopper.jpg" not in found and "flower.jpg" not in found
    # each kind found comes with what to do
    assert "undecodable (error, " in out and "re-encode it" in out


def test_check_clean_images_exits_zero(fashion_mnist: PrepareResult, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    folder = fashion_mnist.out / "val" / "7_sneaker"
    assert main(["data", "check", str(folder), "--quiet"]) == 0
    assert "checked 1000 image(s)" in capsys.readouterr().out


def test_check_missing_path_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["data", "check", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_exclude_list_lets_training_skip_bad_files(
    fashion_mnist: PrepareResult,  # noqa: F811
    pillow_images: Path,  # noqa: F811
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    root = tmp_path / "train"
    for class_name in ("0_t-shirt_top", "9_ankle_boot"):
        (root / class_name).mkdir(parents=True)
        for source in sorted((fashion_mnist.out / "train" / class_name).iterdir())[:8]:
            shutil.copy(source, root / class_name)
    for bad in ("truncated_jpeg.jpg", "junk_jpeg_header.jpg"):
        shutil.copy(pillow_images / bad, root / "9_ankle_boot" / bad)
    exclude = tmp_path / "exclude.txt"
    assert main(["data", "check", str(root), "--quiet", "--write-exclude", str(exclude)]) == 1
    assert sorted(Path(line).name for line in exclude.read_text().split()) == [
        "junk_jpeg_header.jpg",
        "truncated_jpeg.jpg",
    ]
    cfg = DataConfig(
        train_dir=root, val_dir=root, exclude_list=exclude, image_size=32, batch_size=4, num_threads=2,
        superpixel={"n_segments": 16},
    )  # fmt: skip
    loader = TrainLoader(cfg)
    seen = np.concatenate([batch.index.numpy() for batch in loader.iter_epoch(0)])
    assert len(loader.index) == 16 and sorted(seen.tolist()) == list(range(16))
