"""The DALI pipelines on CPU, on real Fashion-MNIST JPEGs, with the real superpixel operator.

Each test uses a few dozen images of three classes, chosen with a file list (data.train_list), so
the whole module takes well under a minute on 2 cores.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.fixtures.datasets import denormalize, fashion_mnist, write_file_list  # noqa: F401 (fixture)
from tests.fixtures.images import pillow_images  # noqa: F401 (fixture)
from vigsp import superpixels
from vigsp.data.config import DataConfig
from vigsp.data.fashion_mnist import PrepareResult
from vigsp.data.loader import BadImageError, Batch, EvalLoader, GraphCapacityError, TrainLoader
from vigsp.data.pipelines import choose_decoder
from vigsp.errors import UserError
from vigsp.models import get_spec

pytestmark = pytest.mark.dali

CLASSES = ["1_trouser", "5_sandal", "8_bag"]
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(scope="module")
def lists(fashion_mnist: PrepareResult, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:  # noqa: F811
    folder = tmp_path_factory.mktemp("lists")
    out = fashion_mnist.out
    return {
        "train": write_file_list(folder / "train.txt", out / "train", 24, CLASSES),  # 72 images
        "val": write_file_list(folder / "val.txt", out / "val", 7, CLASSES),  # 21: uneven shards
    }


def make_config(fashion_mnist: PrepareResult, lists: dict[str, Path], **overrides) -> DataConfig:  # noqa: F811
    settings = {
        "train_dir": fashion_mnist.out / "train",
        "val_dir": fashion_mnist.out / "val",
        "train_list": lists["train"],
        "val_list": lists["val"],
        "classes": CLASSES,
        "image_size": 32,
        "batch_size": 8,
        "num_threads": 2,
        "mean": MEAN,
        "std": STD,
        "seed": 7,
        "augmentation": {"scale": (0.5, 1.0), "hflip_prob": 0.5, "color_jitter": 0.4, "random_erasing": 0.5},
        "superpixel": {"method": "slic", "n_segments": 16},
    }
    return DataConfig(**{**settings, **overrides})


def check_graph_fields(batch: Batch, cfg: DataConfig, method: str) -> None:
    """The padded graph tensors are self-consistent and equal the core's result on the same pixels."""
    size, b = cfg.image_size, len(batch)
    assert batch.label_maps.shape == (b, size, size) and batch.label_maps.dtype == torch.int32
    assert batch.pixel_mask.shape == (b, size, size) and batch.pixel_mask.dtype == torch.uint8
    assert (
        batch.node_features.shape == (b, cfg.node_capacity, 13) and batch.node_features.dtype == torch.float32
    )
    assert batch.node_mask.shape == (b, cfg.node_capacity) and batch.node_mask.dtype == torch.bool
    assert batch.edges.shape == (b, cfg.edge_capacity, 2) and batch.edges.dtype == torch.int32
    assert torch.equal(batch.node_mask.sum(1), batch.node_counts.long())
    pixels = denormalize(batch.images, cfg.mean, cfg.std)
    for i in range(b):
        n, e = int(batch.node_counts[i]), int(batch.edge_counts[i])
        labels = batch.label_maps[i].numpy()
        assert labels.max() + 1 == n and set(np.unique(labels)) == set(range(n))
        assert torch.all(batch.node_features[i, n:] == 0) and torch.all(batch.edges[i, e:] == -1)
        edges = batch.edges[i, :e].numpy()
        assert np.all((edges >= 0) & (edges < n)) and np.all(edges[:, 0] < edges[:, 1])
        # pixel_mask bits from the label map, computed here independently
        right = np.zeros_like(labels, dtype=bool)
        right[:, :-1] = labels[:, :-1] == labels[:, 1:]
        down = np.zeros_like(labels, dtype=bool)
        down[:-1, :] = labels[:-1, :] == labels[1:, :]
        assert np.array_equal(
            batch.pixel_mask[i].numpy(), right.astype(np.uint8) | (down.astype(np.uint8) << 1)
        )
        # the operator ran on exactly the pixels the model gets (augmented, before normalisation)
        seg = cfg.superpixel
        if method == "slic":
            reference = superpixels.slic_graph(
                pixels[i],
                seg.n_segments,
                seg.compactness,
                seg.max_iter,
                subsample_stride=seg.subsample_stride,
            )
        else:
            reference = superpixels.grid_graph(pixels[i], seg.n_segments)
        assert np.array_equal(reference.labels, labels)
        assert np.array_equal(reference.rag_edges, edges)
        np.testing.assert_allclose(
            reference.features, batch.node_features[i, :n].numpy(), rtol=1e-5, atol=1e-4
        )


@pytest.mark.parametrize("method", ["slic", "grid"])
def test_train_epoch_shapes_labels_and_graph(fashion_mnist: PrepareResult, lists, method: str) -> None:  # noqa: F811
    cfg = make_config(fashion_mnist, lists, superpixel={"method": method, "n_segments": 16})
    loader = TrainLoader(cfg)
    batches = list(loader.iter_epoch(0))
    assert loader.steps_per_epoch == len(batches) == 72 // 8
    seen = torch.cat([batch.index for batch in batches])
    assert len(set(seen.tolist())) == 72  # a permutation of the whole (list-selected) split
    assert seen.tolist() != sorted(seen.tolist())
    for batch in batches:
        assert batch.images.shape == (8, 3, 32, 32) and batch.images.dtype == torch.float32
        folders = [Path(loader.index.files[i]).parent.name for i in batch.index.tolist()]
        assert [CLASSES[label] for label in batch.labels.tolist()] == folders
    for batch in batches[:2]:
        check_graph_fields(batch, cfg, method)
    if method == "grid":
        assert torch.all(torch.cat([b.node_counts for b in batches]) == 16)  # 4 x 4 cells


def test_model_outputs_only_carry_what_the_model_reads(fashion_mnist: PrepareResult, lists) -> None:  # noqa: F811
    # What training asks for: the same label maps, features and counts, without edges and pixel masks.
    cfg = make_config(fashion_mnist, lists)
    full = list(TrainLoader(cfg).iter_epoch(0))[:3]
    lean_loader = TrainLoader(cfg, outputs=get_spec("vig_sp_tiny").inputs().pipeline_outputs)
    assert "edges" not in lean_loader.output_names and "pixel_mask" not in lean_loader.output_names
    lean = list(lean_loader.iter_epoch(0))[:3]
    for a, b in zip(full, lean, strict=True):
        for name in ("images", "labels", "label_maps", "node_features", "node_counts", "node_mask"):
            assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert b.edges is None and b.edge_counts is None and b.pixel_mask is None
    with pytest.raises(ValueError, match="unknown pipeline outputs"):
        TrainLoader(cfg, outputs=("images", "edgez"))


def test_eval_batches_are_the_decoded_files(fashion_mnist: PrepareResult, lists) -> None:  # noqa: F811
    # At the native size with no crop margin, evaluation images are the JPEGs' own pixels.
    cfg = make_config(fashion_mnist, lists, image_size=28, eval_crop_fraction=1.0)
    loader = EvalLoader(cfg)
    batches = list(loader)
    assert [len(b) for b in batches] == [8, 8, 5]  # the last batch is partial, not padded
    index = torch.cat([b.index for b in batches]).tolist()
    assert index == list(range(21))
    pixels = np.concatenate([denormalize(b.images, cfg.mean, cfg.std) for b in batches])
    for i in index:
        path = loader.index.path(i)
        with Image.open(path) as jpeg:
            expected = np.asarray(jpeg.convert("RGB")).astype(int)
        assert np.abs(pixels[i].astype(int) - expected).max() <= 1, path
        assert CLASSES[int(loader.index.labels[i])] == path.parent.name
    check_graph_fields(batches[0], cfg, "slic")


def test_shards_are_disjoint_and_cover_the_data(fashion_mnist: PrepareResult, lists) -> None:  # noqa: F811
    cfg = make_config(fashion_mnist, lists, superpixel=None)
    shards = []
    for rank in range(2):
        loader = TrainLoader(cfg, rank=rank, world_size=2)
        assert loader.steps_per_epoch == 72 // 16
        shards.append(torch.cat([b.index for b in loader.iter_epoch(0)]).tolist())
    plan = TrainLoader(cfg, world_size=2).epoch_plan(0).files
    assert len(shards[0]) == len(shards[1]) == 32 and not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == sorted(plan.tolist())  # 64 of 72: a different tail each epoch
    assert not np.array_equal(plan, TrainLoader(cfg, world_size=2).epoch_plan(1).files)

    for world in (2, 3):  # evaluation: every image exactly once, whatever the shard sizes
        counts = Counter()
        for rank in range(world):
            loader = EvalLoader(cfg, rank=rank, world_size=world)
            for _ in range(2):  # and again on the next pass
                once = [i for b in loader for i in b.index.tolist()]
                assert len(once) == loader.num_samples
            counts.update(once)
        assert counts == Counter(range(21))


def test_repeated_augmentation_sends_copies_to_different_ranks(fashion_mnist: PrepareResult, lists) -> None:  # noqa: F811
    cfg = make_config(fashion_mnist, lists, augmentation={"repeated_augment": 3}, batch_size=4)
    loader = TrainLoader(cfg, world_size=3)
    plan = loader.epoch_plan(0).files.reshape(3, -1)  # row r: rank r's images, in order
    assert plan.shape[1] == loader.steps_per_epoch * 4 == 72 // 12 * 4  # the epoch keeps its length
    for rank_images in plan:
        assert len(set(rank_images.tolist())) == len(rank_images)  # no copy twice on one rank
    assert Counter(plan.flatten().tolist()) == Counter({i: 3 for i in plan[0].tolist()})


def test_resume_from_mid_epoch_checkpoint_is_exact(fashion_mnist: PrepareResult, lists) -> None:  # noqa: F811
    cfg = make_config(fashion_mnist, lists)
    uninterrupted = TrainLoader(cfg, rank=1, world_size=2)
    state, expected = None, []
    for epoch in range(2):
        for step, batch in enumerate(uninterrupted.iter_epoch(epoch)):
            if state is not None:
                expected.append(batch)
            if epoch == 0 and step == 1:
                state = json.loads(json.dumps(uninterrupted.state_dict()))  # as a checkpoint stores it
    assert state["epoch"] == 0 and state["step"] == 2

    resumed = TrainLoader(cfg, rank=1, world_size=2, state=state)
    got = [batch for epoch in range(resumed.epoch, 2) for batch in resumed.iter_epoch(epoch)]
    assert len(got) == len(expected) == 2 * 4 - 2
    for a, b in zip(expected, got, strict=True):
        for field in ("index", "labels", "images", "label_maps", "node_features", "edges", "pixel_mask"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field


@pytest.mark.parametrize(("before", "after", "steps"), [(2, 3, 2), (3, 1, 1), (1, 2, 7)])
def test_an_epoch_interrupted_on_one_world_size_continues_on_another_exactly_once(
    fashion_mnist: PrepareResult,  # noqa: F811
    lists,
    before: int,
    after: int,
    steps: int,
) -> None:
    """Ranks of one world size take ``steps`` batches; the run-wide position alone (what a resume on
    another world size has) gives the new ranks the rest of the epoch: each unseen image once."""
    cfg = make_config(fashion_mnist, lists, superpixel=None, batch_size=4)  # 72 images
    seen, progress = [], []
    for rank in range(before):
        loader = TrainLoader(cfg, rank=rank, world_size=before)
        for step, batch in enumerate(loader.iter_epoch(0)):
            seen += batch.index.tolist()
            if step + 1 == steps:
                break
        progress.append(json.loads(json.dumps(loader.progress.state_dict())))  # as a checkpoint keeps it
    assert all(p == progress[0] for p in progress)  # run-wide: the same on every rank
    epoch = set(TrainLoader(cfg, world_size=before).epoch_plan(0).files.tolist())

    rest, batches_per_rank = [], []
    for rank in range(after):
        loader = TrainLoader(cfg, rank=rank, world_size=after)
        loader.progress.load_state_dict(progress[0])
        left = loader.batches_left(0)
        batches = list(loader.iter_epoch(0))
        assert len(batches) == left and all(len(b) >= 1 for b in batches)
        batches_per_rank.append(len(batches))
        rest += [i for b in batches for i in b.index.tolist()]
        assert loader.epoch == 1 and len(list(loader.iter_epoch(1))) == loader.steps_per_epoch
    assert len(set(batches_per_rank)) == 1  # the ranks stay in step
    assert len(rest) == len(set(rest)) and not set(rest) & set(seen)  # nothing twice
    assert set(seen) | set(rest) == epoch  # nothing lost (72 = whole batches here: no tail)


def test_leaving_an_epoch_early_keeps_the_position(fashion_mnist: PrepareResult, lists) -> None:  # noqa: F811
    cfg = make_config(fashion_mnist, lists, superpixel=None)
    expected = [b.index.tolist() for b in TrainLoader(cfg).iter_epoch(0)]
    loader = TrainLoader(cfg)
    taken = []
    for step, batch in enumerate(loader.iter_epoch(0)):
        taken.append(batch.index.tolist())
        if step == 3:
            break
    state = loader.state_dict()
    assert (state["epoch"], state["step"]) == (0, 4) and taken == expected[:4]
    assert [b.index.tolist() for b in loader.iter_epoch(0)] == expected[4:]
    assert (loader.state_dict()["epoch"], loader.state_dict()["step"]) == (1, 0)


def test_randaugment_pipeline(fashion_mnist: PrepareResult, lists) -> None:  # noqa: F811
    augmentation = {
        "randaugment": {"num_ops": 2, "magnitude": 9, "magnitude_std": 0.5},
        "random_erasing": 0.25,
    }
    superpixel = {"method": "slic", "n_segments": 16, "subsample_stride": 3}
    cfg = make_config(fashion_mnist, lists, augmentation=augmentation, superpixel=superpixel)
    batch = next(iter(TrainLoader(cfg).iter_epoch(0)))
    assert batch.images.shape == (8, 3, 32, 32)
    check_graph_fields(batch, cfg, "slic")


def test_without_superpixels_only_images_and_labels(fashion_mnist: PrepareResult, lists) -> None:  # noqa: F811
    batch = next(iter(EvalLoader(make_config(fashion_mnist, lists, superpixel=None))))
    assert batch.images.shape == (8, 3, 32, 32) and batch.node_features is None and batch.label_maps is None


@pytest.mark.parametrize("key", ["max_nodes", "max_edges"])
def test_too_many_segments_is_an_error_naming_the_key(fashion_mnist: PrepareResult, lists, key: str) -> None:  # noqa: F811
    cfg = make_config(fashion_mnist, lists)
    setattr(cfg, key, 3)  # below what SLIC returns here; the config's own check only sees n_segments
    with pytest.raises(
        GraphCapacityError, match=rf"more than data\.{key} = 3.*raise data\.{key} to at least"
    ):
        next(iter(TrainLoader(cfg).iter_epoch(0)))


@pytest.mark.parametrize("bad_name", ["truncated_jpeg.jpg", "junk_jpeg_header.jpg"])
def test_training_on_a_bad_file_names_it(
    fashion_mnist: PrepareResult,  # noqa: F811
    pillow_images: Path,  # noqa: F811
    tmp_path: Path,
    bad_name: str,
) -> None:
    for class_name, count in ((CLASSES[0], 8), (CLASSES[1], 7)):
        (tmp_path / "train" / class_name).mkdir(parents=True)
        for source in sorted((fashion_mnist.out / "train" / class_name).iterdir())[:count]:
            shutil.copy(source, tmp_path / "train" / class_name)
    bad = tmp_path / "train" / CLASSES[1] / bad_name
    shutil.copy(pillow_images / bad_name, bad)
    # 16 images in batches of 4: no tail is dropped, so the bad one is read in epoch 0
    settings = {"train_dir": tmp_path / "train", "train_list": None, "classes": None, "batch_size": 4}
    cfg = make_config(fashion_mnist, {"train": None, "val": None}, **settings)
    with pytest.raises(BadImageError) as caught:
        for _ in TrainLoader(cfg).iter_epoch(0):
            pass
    listed = [line.strip() for line in str(caught.value).splitlines() if line.startswith("  ")]
    kind = "truncated" if "truncated" in bad_name else "undecodable"  # Pillow reads the latter, DALI not
    assert len(listed) == 1 and listed[0].startswith(f"{bad}: {kind}: "), listed  # no healthy file blamed
    assert "vigsp data check" in str(caught.value)


def test_gpu_decoding_without_cuda_is_a_user_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert choose_decoder("auto") == "cpu"
    with pytest.raises(UserError, match=r"data\.decoder is 'mixed'"):
        choose_decoder("mixed")
