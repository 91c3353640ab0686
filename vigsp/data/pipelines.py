"""The DALI pipelines: read -> decode -> augment (uint8) -> superpixel graph -> normalise -> pad.

The superpixel operator runs on the augmented uint8 image, before normalisation, so the graph
describes exactly the pixels the model sees. Its outputs are ragged (a different node and edge
count per image), and DALI's PyTorch iterator only takes dense batches, so node features and
edges are padded (or cut) to ``max_nodes`` / ``max_edges`` here and the true counts travel
alongside; the loader refuses counts above the capacity instead of losing nodes silently.

Decoding runs on the GPU (``mixed``, nvJPEG) when CUDA is available and on the CPU otherwise;
the superpixel operator is CPU-only, so on GPU pipelines the augmented image is copied back.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

from nvidia.dali import fn, pipeline_def, types
from nvidia.dali import math as dmath
from nvidia.dali.auto_aug import rand_augment
from nvidia.dali.auto_aug.core import select, signed_bin
from nvidia.dali.data_node import DataNode
from nvidia.dali.pipeline import Pipeline

from vigsp.data.config import AugmentationConfig, DataConfig, RandAugmentConfig, SuperpixelConfig
from vigsp.errors import UserError

log = logging.getLogger(__name__)

READER_NAME = "reader"
# labels, rag_edges, features, pixel_mask of each image (see vigsp.superpixels.SuperpixelGraph)
SuperpixelStep = Callable[[DataNode], tuple[DataNode, DataNode, DataNode, DataNode]]
Decoder = Literal["cpu", "mixed"]

PLAIN_OUTPUTS = ("images", "index")
GRAPH_OUTPUTS = (
    *PLAIN_OUTPUTS,
    "label_maps",
    "node_features",
    "node_counts",
    "edges",
    "edge_counts",
    "pixel_mask",
)

# timm's magnitudes run 0-10; 101 DALI bins give them a resolution of 0.1.
_MAGNITUDE_BINS = 101


def dali_superpixel_step(config: SuperpixelConfig) -> SuperpixelStep:
    """The real operator, ``fn.vigsp.superpixel_graph``, with the config's settings."""

    def step(images: DataNode) -> tuple[DataNode, DataNode, DataNode, DataNode]:
        from vigsp.superpixels import dali as dali_plugin

        return dali_plugin.superpixel_graph(
            images,
            method=config.method,
            n_segments=config.n_segments,
            compactness=config.compactness,
            max_iter=config.max_iter,
            subsample_stride=config.subsample_stride,
        )

    return step


def choose_decoder(setting: Literal["auto", "cpu", "mixed"]) -> Decoder:
    """``auto`` means nvJPEG on the GPU when torch sees CUDA, the CPU otherwise; logs the choice."""
    import torch

    cuda = torch.cuda.is_available()
    if setting == "mixed" and not cuda:
        raise UserError(
            "data.decoder is 'mixed' (GPU decoding) but CUDA is not available; use 'auto' or 'cpu'"
        )
    decoder: Decoder = ("mixed" if cuda else "cpu") if setting == "auto" else setting
    reason = "CUDA is available" if cuda else "no CUDA device"
    log.info(
        "data: decoding images on the %s (data.decoder=%s, %s)",
        "GPU" if decoder == "mixed" else "CPU",
        setting,
        reason,
    )
    return decoder


def _interp(cfg: DataConfig) -> Any:
    return types.INTERP_CUBIC if cfg.interpolation == "cubic" else types.INTERP_LINEAR


def _uniform(low: float, high: float) -> DataNode:
    return fn.random.uniform(range=[low, high])


def _color_jitter(images: DataNode, strength: float) -> DataNode:
    low, high = 1.0 - strength, 1.0 + strength
    return fn.color_twist(
        images, brightness=_uniform(low, high), contrast=_uniform(low, high), saturation=_uniform(low, high)
    )


def _rand_augment(images: DataNode, config: RandAugmentConfig, size: int) -> DataNode:
    """timm's RandAugment (increasing magnitudes, Gaussian magnitude noise) from DALI's operation suite."""
    suite = rand_augment.get_rand_augment_suite(use_shape=True)
    for _ in range(config.num_ops):
        op = fn.random.uniform(values=list(range(len(suite))), dtype=types.INT32)
        if config.magnitude_std > 0:
            noisy = fn.random.normal(mean=config.magnitude * 10, stddev=config.magnitude_std * 10)
            # DALI's float -> int cast rounds to nearest, so this stays within 0..100.
            magnitude = fn.cast(dmath.clamp(noisy, 0.0, 100.0), dtype=types.INT32)
        else:
            magnitude = round(config.magnitude * 10)
        images = select(
            suite,
            op,
            data=images,
            magnitude_bin=signed_bin(magnitude),
            num_magnitude_bins=_MAGNITUDE_BINS,
            shape=[size, size],
            fill_value=128,
        )
    return images


def _random_erase(images: DataNode, probability: float, fill: Sequence[float]) -> DataNode:
    """timm's RandomErasing (one rectangle, 2-33 % of the area, aspect 0.3-3.3) with a constant fill."""
    area = _uniform(0.02, 1 / 3)
    ratio = dmath.exp(_uniform(math.log(0.3), math.log(1 / 0.3)))
    height = dmath.min(dmath.sqrt(area * ratio), 1.0)
    width = dmath.min(dmath.sqrt(area / ratio), 1.0)
    on = fn.cast(fn.random.coin_flip(probability=probability), dtype=types.FLOAT)
    anchor = fn.stack(_uniform(0, 1) * (1.0 - height), _uniform(0, 1) * (1.0 - width))
    return fn.erase(
        images,
        anchor=anchor,
        shape=fn.stack(height * on, width * on),
        axis_names="HW",
        normalized_anchor=True,
        normalized_shape=True,
        fill_value=list(fill),
    )


def _train_images(encoded: DataNode, cfg: DataConfig, decoder: Decoder) -> DataNode:
    aug: AugmentationConfig = cfg.augmentation
    images = fn.decoders.image_random_crop(
        encoded,
        device=decoder,
        output_type=types.RGB,
        random_area=list(aug.scale),
        random_aspect_ratio=list(aug.ratio),
        num_attempts=10,
    )
    images = fn.resize(
        images, size=[cfg.image_size, cfg.image_size], interp_type=_interp(cfg), antialias=True
    )
    if aug.hflip_prob > 0:
        images = fn.flip(images, horizontal=fn.random.coin_flip(probability=aug.hflip_prob))
    if aug.color_jitter > 0:
        images = _color_jitter(images, aug.color_jitter)
    if aug.randaugment is not None:
        images = _rand_augment(images, aug.randaugment, cfg.image_size)
    if aug.random_erasing > 0:
        images = _random_erase(images, aug.random_erasing, [255 * m for m in cfg.mean])
    return images


def _eval_images(encoded: DataNode, cfg: DataConfig, decoder: Decoder) -> DataNode:
    images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
    shorter = math.floor(cfg.image_size / cfg.eval_crop_fraction)  # as timm: floor(size / crop_pct)
    images = fn.resize(images, resize_shorter=shorter, interp_type=_interp(cfg), antialias=True)
    return fn.crop(images, crop=[cfg.image_size, cfg.image_size])  # centred


def check_output_names(names: Sequence[str]) -> None:
    unknown = sorted(set(names) - set(GRAPH_OUTPUTS))
    if unknown:
        raise ValueError(f"unknown pipeline outputs {unknown}; choose from {', '.join(GRAPH_OUTPUTS)}")


def _pad_rows(data: DataNode, rows: int, fill: float) -> DataNode:
    return fn.slice(data, start=[0], shape=[rows], axes=[0], out_of_bounds_policy="pad", fill_values=fill)


def _outputs(
    images: DataNode, index: DataNode, cfg: DataConfig, step: SuperpixelStep | None, names: Sequence[str]
) -> tuple:
    normalized = fn.crop_mirror_normalize(
        images,
        dtype=types.FLOAT,
        output_layout="CHW",
        mean=[255 * m for m in cfg.mean],
        std=[255 * s for s in cfg.std],
    )
    if step is None:
        return normalized, index
    on_cpu = images.cpu() if images.device == "gpu" else images
    label_maps, edges, features, pixel_mask = step(on_cpu)
    nodes = {"images": normalized, "index": index, "label_maps": label_maps, "pixel_mask": pixel_mask}
    # Pad short samples, cut long ones: the counts let the loader refuse the latter. Only the
    # requested outputs get operators. (No lambdas here: with RandAugment, DALI's conditionals
    # rewrite this function with AutoGraph, which cannot parse them.)
    if "node_features" in names:
        nodes["node_features"] = _pad_rows(features, cfg.node_capacity, 0.0)
    if "node_counts" in names:
        nodes["node_counts"] = features.shape(dtype=types.INT32)[0]
    if "edges" in names:
        nodes["edges"] = _pad_rows(edges, cfg.edge_capacity, -1)
    if "edge_counts" in names:
        nodes["edge_counts"] = edges.shape(dtype=types.INT32)[0]
    return tuple(nodes[name] for name in names)


@pipeline_def
def _train_def(files, sample_ids, shard_id, num_shards, cfg, decoder, step, outputs, pad_last_batch=False):
    encoded, index = fn.readers.file(
        files=files,
        labels=sample_ids,
        shard_id=shard_id,
        num_shards=num_shards,
        stick_to_shard=True,
        pad_last_batch=pad_last_batch,  # a continuation's short last batch (vigsp/data/epoch_plan.py)
        random_shuffle=False,  # the loader permutes the file list for each epoch
        name=READER_NAME,
    )
    return _outputs(_train_images(encoded, cfg, decoder), index, cfg, step, outputs)


@pipeline_def
def _eval_def(files, sample_ids, shard_id, num_shards, cfg, decoder, step, outputs):
    encoded, index = fn.readers.file(
        files=files,
        labels=sample_ids,
        shard_id=shard_id,
        num_shards=num_shards,
        stick_to_shard=True,
        pad_last_batch=True,  # with LastBatchPolicy.PARTIAL: every sample exactly once
        name=READER_NAME,
    )
    return _outputs(_eval_images(encoded, cfg, decoder), index, cfg, step, outputs)


def build_pipeline(
    kind: Literal["train", "eval"],
    *,
    files: Sequence[str],
    sample_ids: Sequence[int],
    shard_id: int,
    num_shards: int,
    cfg: DataConfig,
    decoder: Decoder,
    step: SuperpixelStep | None,
    seed: int,
    device_id: int | None,
    checkpoint: bytes | None = None,
    outputs: Sequence[str] = GRAPH_OUTPUTS,
    pad_last_batch: bool = False,
) -> Pipeline:
    """A built pipeline whose outputs are ``outputs`` (names from GRAPH_OUTPUTS, in any order) with
    a step, or PLAIN_OUTPUTS without one. ``pad_last_batch`` (training; evaluation always pads):
    the shard's last batch is padded, for LastBatchPolicy.PARTIAL to cut back."""
    check_output_names(outputs)
    definition = _train_def if kind == "train" else _eval_def
    extra = {"pad_last_batch": True} if kind == "train" and pad_last_batch else {}
    randaugment = kind == "train" and cfg.augmentation.randaugment is not None
    pipe = definition(
        files=list(files),
        sample_ids=[int(i) for i in sample_ids],
        shard_id=shard_id,
        num_shards=num_shards,
        cfg=cfg,
        decoder=decoder,
        step=step,
        outputs=tuple(outputs),
        batch_size=cfg.batch_size,
        num_threads=cfg.num_threads,
        device_id=device_id if decoder == "mixed" else None,
        seed=seed,
        prefetch_queue_depth=cfg.prefetch,
        enable_conditionals=randaugment,  # DALI's RandAugment picks operations with `if`
        enable_checkpointing=kind == "train",  # evaluation always starts from the beginning
        checkpoint=checkpoint,
        **extra,
    )
    pipe.build()
    return pipe
