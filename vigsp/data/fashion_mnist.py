"""``vigsp data prepare fashion-mnist``: the idx files become a JPEG ImageFolder.

Layout written under OUT::

    train/<class>/<index>.jpg    60 000 images, the official training split
    val/<class>/<index>.jpg      10 000 images, the official test split (t10k)
    classes.txt                  the class folders in label order (usable as data.class_list)
    .vigsp-prepared.json         written last; its presence means OUT is complete

Class folders are ``<label>_<name>`` (``0_t-shirt_top`` ... ``9_ankle_boot``), so sorting them
(what a class-folder reader does) gives back the official label order. ``<index>`` is the
image's position in the idx file. Images are RGB (the grey value in all three channels, since
the pipelines and the superpixel features expect colour), ``size`` x ``size`` pixels (28 =
the original; larger sizes are bicubic upsamples) and JPEG quality 95 with 4:4:4 chroma,
which keeps pixels within about 10 grey levels of the originals (about 1 on average).
"""

from __future__ import annotations

import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from vigsp.data.idx import read_images_and_labels
from vigsp.errors import UserError

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package
NATIVE_SIZE = 28
DEFAULT_QUALITY = 95
CLASS_NAMES = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
CLASS_DIRS = tuple(f"{label}_{name}" for label, name in enumerate(CLASS_NAMES))
SPLITS = {"train": "train", "val": "t10k"}  # output folder -> idx file prefix
MARKER = ".vigsp-prepared.json"
_FORMAT_VERSION = 1
_CHUNK = 2500  # images per worker task: large enough to amortise pickling, small for a smooth bar


@dataclass(frozen=True)
class PrepareResult:
    out: Path
    counts: dict[str, int]  # split -> images
    skipped: bool  # True when OUT was already complete


def split_files(source: Path, prefix: str) -> tuple[Path, Path]:
    """The images and labels files of one split in ``source``, gzipped or not."""
    found = []
    for kind, ndim in (("images", 3), ("labels", 1)):
        stem = f"{prefix}-{kind}-idx{ndim}-ubyte"
        candidates = [source / f"{stem}.gz", source / stem]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            hint = (
                "install Debian's package (apt-get install dataset-fashion-mnist) or pass --source DIR"
                if source == DEFAULT_SOURCE
                else "pass --source with the directory holding the four Fashion-MNIST idx files"
            )
            raise UserError(f"{source} has no {stem}.gz (nor {stem}); {hint}")
        found.append(path)
    return found[0], found[1]


def _write_chunk(
    out_split: str, start: int, images: np.ndarray, labels: np.ndarray, size: int, quality: int
) -> int:
    # Runs in a worker process.
    for offset, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        image = Image.fromarray(pixels)  # 2-D uint8 -> mode "L"
        if size != NATIVE_SIZE:
            image = image.resize((size, size), Image.Resampling.BICUBIC)
        path = os.path.join(out_split, CLASS_DIRS[label], f"{start + offset:05d}.jpg")
        image.convert("RGB").save(path, format="JPEG", quality=quality, subsampling=0)
    return len(images)


def _read_marker(out: Path) -> dict | None:
    marker = out / MARKER
    if not marker.is_file():
        return None
    try:
        return json.loads(marker.read_text())
    except (OSError, ValueError):
        return None  # a damaged marker: treat OUT as incomplete and write it again


def prepare_fashion_mnist(
    source: Path = DEFAULT_SOURCE,
    out: Path = Path("data/fashion_mnist"),
    size: int = NATIVE_SIZE,
    quality: int = DEFAULT_QUALITY,
    workers: int | None = None,
    progress: bool = True,
) -> PrepareResult:
    """Writes the ImageFolder (see the module docstring); does nothing if OUT is already complete."""
    if not 8 <= size <= 1024:
        raise UserError(f"--size {size} is out of range; use 8..1024 pixels (28 = the original size)")
    if not 1 <= quality <= 100:
        raise UserError(f"--quality {quality} is out of range; use 1..100")
    settings = {"format": _FORMAT_VERSION, "size": size, "quality": quality}
    marker = _read_marker(out)
    if marker is not None:
        if {key: marker.get(key) for key in settings} != settings:
            raise UserError(
                f"{out} already holds Fashion-MNIST prepared with size={marker.get('size')}, "
                f"quality={marker.get('quality')}; choose another --out, or delete {out} to redo it"
            )
        return PrepareResult(out, dict(marker["counts"]), skipped=True)

    splits = {}
    for split, prefix in SPLITS.items():
        images_path, labels_path = split_files(source, prefix)
        splits[split] = read_images_and_labels(images_path, labels_path, num_classes=len(CLASS_DIRS))

    for split in splits:
        for class_dir in CLASS_DIRS:
            (out / split / class_dir).mkdir(parents=True, exist_ok=True)
    total = sum(len(labels) for _, labels in splits.values())
    workers = workers or min(os.cpu_count() or 1, 8)
    # spawn, not fork: the caller may hold DALI or torch threads, which do not survive a fork.
    context = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(workers, mp_context=context) as pool,
        tqdm(total=total, unit="img", desc=f"writing {out}", disable=not progress) as bar,
    ):
        futures = [
            pool.submit(
                _write_chunk, str(out / split), start, images[start : start + _CHUNK],
                labels[start : start + _CHUNK], size, quality,
            )
            for split, (images, labels) in splits.items()
            for start in range(0, len(labels), _CHUNK)
        ]  # fmt: skip
        for future in as_completed(futures):
            bar.update(future.result())

    counts = {split: len(labels) for split, (_, labels) in splits.items()}
    (out / "classes.txt").write_text("".join(f"{name}\n" for name in CLASS_DIRS))
    (out / MARKER).write_text(
        json.dumps({**settings, "counts": counts, "classes": list(CLASS_DIRS)}, indent=1)
    )
    return PrepareResult(out, counts, skipped=False)
