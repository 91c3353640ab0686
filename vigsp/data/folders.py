"""Which images make up a split, and their labels: class folders or a file list, plus a class list.

Every rank builds the same index (sorted, no file-system order), which is what makes sharding by
rank disjoint. Labels are positions in the class list: the ``classes`` order when given (for
example ImageNet-100's class-list file), otherwise the sorted class folder names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from vigsp.data.config import DataConfig
from vigsp.errors import UserError

log = logging.getLogger(__name__)

# What the decoders read (case-insensitive); other files in class folders are ignored.
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".pnm", ".ppm", ".pgm", ".pbm", ".jp2"}
)

Split = Literal["train", "val"]


@dataclass(frozen=True, eq=False)
class ImageIndex:
    """The images of one split: ``root / files[i]`` has class ``classes[labels[i]]``."""

    root: Path
    files: tuple[str, ...]  # relative to root, "/"-separated
    labels: np.ndarray  # [N] int64
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.files)

    def path(self, i: int) -> Path:
        return self.root / self.files[i]

    def subset(self, keep: np.ndarray) -> ImageIndex:
        """The images at positions ``keep`` (indices or a boolean mask), in that order."""
        positions = np.arange(len(self))[keep]
        return ImageIndex(
            self.root, tuple(self.files[i] for i in positions), self.labels[positions], self.classes
        )


def is_image_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def read_name_list(path: Path, what: str) -> list[str]:
    """Non-empty, non-comment (#) lines of a text file, stripped."""
    try:
        text = path.read_text()
    except OSError as err:
        raise UserError(f"cannot read the {what} {path}: {err.strerror or err}") from err
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _class_folders(root: Path) -> list[str]:
    if not root.is_dir():
        raise UserError(f"{root} is not a directory; point data.train_dir/data.val_dir at the split folders")
    return sorted(
        entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith(".")
    )


def _walk_images(folder: Path) -> list[str]:
    """Image files under ``folder`` (recursively), relative to it, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, folder)
        for name in filenames:
            if is_image_file(name) and not name.startswith("."):
                found.append(name if rel == "." else f"{rel}/{name}".replace(os.sep, "/"))
    return sorted(found)


@dataclass(frozen=True)
class _ListEntry:
    path: str
    label: str | None  # class name or decimal index as written, None = from the parent folder
    line: int


def _parse_file_list(path: Path) -> list[_ListEntry]:
    entries = []
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise UserError(f"cannot read the file list {path}: {err.strerror or err}") from err
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        # "path label" when the last token is not itself an image path; paths may contain spaces.
        if len(parts) == 2 and not is_image_file(parts[1]):
            entries.append(_ListEntry(parts[0], parts[1], number))
        else:
            entries.append(_ListEntry(line, None, number))
    if not entries:
        raise UserError(f"the file list {path} names no images")
    return entries


def _entry_class(entry: _ListEntry) -> str:
    if entry.label is not None:
        return entry.label
    parent = Path(entry.path).parent.name
    if not parent:
        raise UserError(
            f"line {entry.line}: {entry.path!r} has no class: write 'path label' or put it in a class folder"
        )
    return parent


def resolve_classes(cfg: DataConfig) -> tuple[str, ...]:
    """The class names in label order, shared by both splits."""
    if cfg.classes is not None:
        return tuple(cfg.classes)
    if cfg.class_list is not None:
        names = read_name_list(cfg.class_list, "class list (data.class_list)")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if not names or repeated:
            problem = "is empty" if not names else f"repeats {', '.join(repeated)}"
            raise UserError(
                f"the class list {cfg.class_list} (data.class_list) {problem}; list each class once"
            )
        return tuple(names)
    if cfg.train_list is not None:
        found = {_entry_class(entry) for entry in _parse_file_list(cfg.train_list)}
        names = sorted(name for name in found if not name.isdecimal())
        if names:  # decimal labels, if any, are positions in this list
            return tuple(names)
        return tuple(str(i) for i in range(max(int(n) for n in found) + 1))  # DALI's "path index" lists
    classes = _class_folders(cfg.train_dir)
    if not classes:
        raise UserError(
            f"{cfg.train_dir} (data.train_dir) has no class sub-directories; lay images out as "
            "<split>/<class>/<image> or give data.train_list"
        )
    return tuple(classes)


def _label_of(name: str, lookup: dict[str, int], classes: Sequence[str], where: str) -> int:
    if name in lookup:
        return lookup[name]
    if name.isdecimal() and int(name) < len(classes):
        return int(name)
    raise UserError(
        f"{where}: class {name!r} is not among the {len(classes)} classes ({', '.join(classes[:5])}, ...)"
    )


def index_from_folders(root: Path, classes: Sequence[str], split: Split) -> ImageIndex:
    """Images in ``root/<class>/**`` for each class, labelled by the class's position."""
    files: list[str] = []
    labels: list[int] = []
    present = set(_class_folders(root))
    for label, name in enumerate(classes):
        if name not in present:
            message = f"{root} has no folder for class {name!r}"
            if split == "train":
                raise UserError(f"{message}; fix data.classes/data.class_list or the dataset layout")
            log.warning("%s; no validation images for it", message)
            continue
        members = _walk_images(root / name)
        if not members:
            log.warning("class folder %s holds no images", root / name)
        files.extend(f"{name}/{member}" for member in members)
        labels.extend([label] * len(members))
    return ImageIndex(root, tuple(files), np.asarray(labels, dtype=np.int64), tuple(classes))


def index_from_file_list(list_path: Path, root: Path, classes: Sequence[str]) -> ImageIndex:
    """Images named in ``list_path`` (see DataConfig.train_list), relative to ``root``."""
    lookup = {name: i for i, name in enumerate(classes)}
    entries = _parse_file_list(list_path)
    labels = [_label_of(_entry_class(e), lookup, classes, f"{list_path} line {e.line}") for e in entries]
    files = tuple(e.path.replace(os.sep, "/") for e in entries)
    return ImageIndex(root, files, np.asarray(labels, dtype=np.int64), tuple(classes))


def _exclusions(cfg: DataConfig, root: Path) -> set[str]:
    if cfg.exclude_list is None:
        return set()
    names = read_name_list(cfg.exclude_list, "exclude list (data.exclude_list)")
    return {os.path.normpath(name if os.path.isabs(name) else os.path.join(root, name)) for name in names}


def _without(index: ImageIndex, excluded: Iterable[str]) -> ImageIndex:
    excluded = set(excluded)
    if not excluded:
        return index
    keep = np.array(
        [os.path.normpath(str(index.path(i))) not in excluded for i in range(len(index))], dtype=bool
    )
    if not keep.all():
        log.info("skipping %d image(s) of %s listed in data.exclude_list", int((~keep).sum()), index.root)
    return index.subset(keep)


def load_split(cfg: DataConfig, split: Split, classes: Sequence[str] | None = None) -> ImageIndex:
    """The index of one split, as every rank computes it."""
    classes = tuple(classes) if classes is not None else resolve_classes(cfg)
    root = cfg.train_dir if split == "train" else cfg.val_dir
    list_path = cfg.train_list if split == "train" else cfg.val_list
    if list_path is not None:
        index = index_from_file_list(list_path, root, classes)
    else:
        index = index_from_folders(root, classes, split)
    index = _without(index, _exclusions(cfg, root))
    if len(index) == 0:
        key = f"data.{split}_dir"
        raise UserError(f"the {split} split ({key} = {root}) has no images of the configured classes")
    return index
