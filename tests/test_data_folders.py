"""Which images and labels a split has: class folders, file lists, class lists, exclusions, config checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from vigsp.data.config import DataConfig
from vigsp.data.folders import load_split, resolve_classes
from vigsp.errors import UserError


def tree(root: Path, layout: dict[str, list[str]]) -> Path:
    """Empty files are enough: indexing never decodes."""
    for class_name, names in layout.items():
        for name in names:
            (root / class_name / name).parent.mkdir(parents=True, exist_ok=True)
            (root / class_name / name).write_bytes(b"")
    return root


def config(tmp_path: Path, **overrides) -> DataConfig:
    settings = {
        "train_dir": tmp_path / "train",
        "val_dir": tmp_path / "val",
        "image_size": 32,
        "batch_size": 2,
    }
    return DataConfig(**{**settings, **overrides})


@pytest.fixture
def imagenet_like(tmp_path: Path) -> Path:
    layout = {
        "n02": ["b.JPEG", "a.jpeg", "notes.txt", ".hidden.jpg"],
        "n01": ["z.jpg", "sub/y.png"],
        "n03": ["c.webp"],
        ".cache": ["x.jpg"],
    }
    tree(tmp_path / "train", layout)
    tree(tmp_path / "val", {"n01": ["v1.jpg"], "n02": ["v2.jpg"], "n03": ["v3.jpg"], "n09": ["extra.jpg"]})
    return tmp_path


def test_class_folders_sorted_with_images_only(imagenet_like: Path) -> None:
    cfg = config(imagenet_like)
    train = load_split(cfg, "train")
    assert train.classes == ("n01", "n02", "n03")
    assert train.files == ("n01/sub/y.png", "n01/z.jpg", "n02/a.jpeg", "n02/b.JPEG", "n03/c.webp")
    assert train.labels.tolist() == [0, 0, 1, 1, 2]
    # val uses train's classes; its extra folder is not a class
    val = load_split(cfg, "val")
    assert val.files == ("n01/v1.jpg", "n02/v2.jpg", "n03/v3.jpg") and val.labels.tolist() == [0, 1, 2]


def test_class_list_file_restricts_and_orders(imagenet_like: Path) -> None:
    class_list = imagenet_like / "imagenet100.txt"
    class_list.write_text("# ImageNet-100 style\nn03\n\nn01\n")
    cfg = config(imagenet_like, class_list=class_list)
    assert resolve_classes(cfg) == ("n03", "n01")
    train = load_split(cfg, "train")
    assert train.files == ("n03/c.webp", "n01/sub/y.png", "n01/z.jpg") and train.labels.tolist() == [0, 1, 1]


def test_class_list_naming_a_missing_class_fails_clearly(imagenet_like: Path) -> None:
    cfg = config(imagenet_like, classes=["n01", "n07"])
    with pytest.raises(UserError, match=r"train has no folder for class 'n07'"):
        load_split(cfg, "train")
    # a class without validation images is only a warning
    assert load_split(config(imagenet_like, classes=["n01", "n02"]), "val").labels.tolist() == [0, 1]


def test_file_list_forms_and_errors(tmp_path: Path) -> None:
    tree(tmp_path / "train", {"cat": ["1.jpg", "my photo.jpg"], "dog": ["2.jpg"]})
    listing = tmp_path / "train.txt"
    listing.write_text("cat/1.jpg\ncat/my photo.jpg cat\n# comment\ndog/2.jpg dog\n")
    train = load_split(config(tmp_path, train_list=listing), "train")
    assert train.classes == ("cat", "dog")
    assert train.files == ("cat/1.jpg", "cat/my photo.jpg", "dog/2.jpg") and train.labels.tolist() == [
        0,
        0,
        1,
    ]
    listing.write_text("dog/2.jpg 2\ncat/1.jpg 0\n")  # DALI's "path index" form
    train = load_split(config(tmp_path, train_list=listing), "train")
    assert train.classes == ("0", "1", "2") and train.labels.tolist() == [2, 0]
    listing.write_text("cat/1.jpg\ndog/2.jpg bird\n")
    with pytest.raises(UserError, match=r"train.txt line 2: class 'bird' is not among the 2 classes"):
        load_split(config(tmp_path, train_list=listing, classes=["cat", "dog"]), "train")


def test_exclude_list_skips_files(imagenet_like: Path) -> None:
    exclude = imagenet_like / "bad.txt"
    exclude.write_text(f"{imagenet_like / 'train' / 'n02' / 'a.jpeg'}\nn03/c.webp\n")
    train = load_split(config(imagenet_like, exclude_list=exclude), "train")
    assert train.files == ("n01/sub/y.png", "n01/z.jpg", "n02/b.JPEG")


def test_empty_or_missing_split_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a directory"):
        resolve_classes(config(tmp_path))
    tree(tmp_path / "train", {"a": ["x.txt"]})
    with pytest.raises(UserError, match=r"the train split .* has no images"):
        load_split(config(tmp_path), "train")


def test_config_checks_and_defaults(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"data.max_nodes \(100\) is below data.superpixel.n_segments"):
        config(tmp_path, superpixel={"n_segments": 196}, max_nodes=100)
    with pytest.raises(ValidationError, match="not both"):
        config(tmp_path, classes=["a"], class_list=tmp_path / "c.txt")
    with pytest.raises(ValidationError, match=r"augmentation\.hflip"):
        config(tmp_path, augmentation={"hflip": 0.5})
    cfg = config(tmp_path, superpixel={"n_segments": 49})
    assert (cfg.node_capacity, cfg.edge_capacity) == (98, 3 * 98 - 6)
