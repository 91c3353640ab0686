"""Batches for the model from the DALI pipelines, per rank: ``TrainLoader`` and ``EvalLoader``.

Training epochs (the policy; the arithmetic is vigsp/data/epoch_plan.py):
  * every epoch is a fresh permutation of the training split, drawn from (data.seed, epoch), the
    same on every rank; it is cut to ``steps_per_epoch * world_size * batch_size`` images (the
    tail, different each epoch, is dropped as in DistributedSampler(drop_last=True)) and rank r
    reads block r of it (``shard_id=rank, num_shards=world_size``). So every rank runs exactly
    ``steps_per_epoch`` full batches (whole optimizer steps of ``accum`` micro batches), no image
    is seen twice in an epoch (unless data.augmentation.repeated_augment asks for it) and the
    ranks' images are disjoint;
  * ``state_dict()`` (after any batch) holds the epoch, the step and DALI's checkpoint of reader
    position and random state; a loader built with it yields exactly the batches that an
    uninterrupted one would have yielded next;
  * ``progress`` is the same position without DALI's part, identical on every rank: restored on
    another world size (or batch size, or accumulation) it continues the interrupted epoch with the
    images no rank had taken, each once, as a new *segment* whose last batch may be short.

Evaluation: the split in its index order, shard r = DALI's r-th contiguous block, the shard padded
to whole batches inside DALI and the padding dropped again (LastBatchPolicy.PARTIAL), so the
ranks together see every image exactly once. Ranks may run different numbers of batches (the last
one partial); reduce metrics after the loop, not per batch.

Bad images and oversized graphs stop the run with errors naming the file (vigsp/data/batch.py).
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator, Sequence
from dataclasses import astuple
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.base_iterator import LastBatchPolicy
from nvidia.dali.plugin.pytorch import DALIGenericIterator

from vigsp.data.batch import (
    BadImageError,
    Batch,
    GraphCapacityError,
    check_capacity,
    explain_pipeline_failure,
)
from vigsp.data.config import DataConfig
from vigsp.data.epoch_plan import Layout, Segment, SegmentPlan, current_segment, first_segment
from vigsp.data.folders import ImageIndex, load_split, resolve_classes
from vigsp.data.pipelines import (
    GRAPH_OUTPUTS,
    PLAIN_OUTPUTS,
    READER_NAME,
    SuperpixelStep,
    build_pipeline,
    check_output_names,
    choose_decoder,
    dali_superpixel_step,
)
from vigsp.errors import UserError

log = logging.getLogger(__name__)

STATE_VERSION = 2  # 2: epoch segments (another layout mid-epoch); 1 is read too


StepSetting = SuperpixelStep | Literal["auto"] | None


def _resolve_step(cfg: DataConfig, step: StepSetting) -> SuperpixelStep | None:
    if step == "auto":
        return dali_superpixel_step(cfg.superpixel) if cfg.superpixel is not None else None
    return step


def _default_device_id() -> int | None:
    return torch.cuda.current_device() if torch.cuda.is_available() else None


class _Loader:
    """What both loaders share: the index, the pipeline settings, batch assembly and error reports."""

    split: Literal["train", "val"]

    def __init__(
        self,
        cfg: DataConfig,
        *,
        rank: int,
        world_size: int,
        index: ImageIndex | None,
        classes: tuple[str, ...] | None,
        superpixel_step: StepSetting,
        device_id: int | None,
        outputs: Sequence[str] = GRAPH_OUTPUTS,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        self.index = (
            index if index is not None else load_split(cfg, self.split, classes or resolve_classes(cfg))
        )
        self._labels = torch.from_numpy(self.index.labels)
        self.step = _resolve_step(cfg, superpixel_step)
        self.decoder = choose_decoder(cfg.decoder)
        self.device_id = device_id if device_id is not None else _default_device_id()
        check_output_names(outputs)
        # Images, index and node counts always travel (the node mask and the capacity check need them).
        wanted = {*outputs, *PLAIN_OUTPUTS, "node_counts"}
        self.output_names = (
            tuple(n for n in GRAPH_OUTPUTS if n in wanted) if self.step is not None else PLAIN_OUTPUTS
        )

    @property
    def classes(self) -> tuple[str, ...]:
        return self.index.classes

    def _pipeline(
        self,
        kind: Literal["train", "eval"],
        sample_ids: np.ndarray,
        seed: int,
        checkpoint: bytes | None,
        pad_last_batch: bool = False,
    ) -> Pipeline:
        return build_pipeline(
            kind,
            files=[str(self.index.path(int(i))) for i in sample_ids],
            sample_ids=sample_ids,
            shard_id=self.rank,
            num_shards=self.world_size,
            cfg=self.cfg,
            decoder=self.decoder,
            step=self.step,
            seed=seed,
            device_id=self.device_id,
            checkpoint=checkpoint,
            outputs=self.output_names,
            pad_last_batch=pad_last_batch,
        )

    def _batch(self, out: dict[str, torch.Tensor]) -> Batch:
        index = out["index"].reshape(-1).long()
        batch = Batch(images=out["images"], labels=self._labels[index], index=index)
        if self.step is None:
            return batch
        node_counts = out["node_counts"].reshape(-1)

        def path_of(i: int) -> Path:  # looked up for an error message only
            return self.index.path(int(index[i]))

        check_capacity(path_of, node_counts, self.cfg.node_capacity, "superpixels", "data.max_nodes")
        batch.node_counts = node_counts
        batch.node_mask = torch.arange(self.cfg.node_capacity) < node_counts[:, None]
        if "edge_counts" in out:
            edge_counts = out["edge_counts"].reshape(-1)
            check_capacity(path_of, edge_counts, self.cfg.edge_capacity, "adjacency edges", "data.max_edges")
            batch.edge_counts = edge_counts
        batch.label_maps = out.get("label_maps")
        batch.node_features = out.get("node_features")
        batch.edges = out.get("edges")
        batch.pixel_mask = out.get("pixel_mask")
        return batch

    def _iterate(self, iterator: DALIGenericIterator, shard: np.ndarray, first_step: int) -> Iterator[Batch]:
        """Batches from ``iterator``; a DALI failure becomes a report on the files around it."""
        position = first_step
        while True:
            try:
                out = next(iterator)
            except StopIteration:
                return
            except RuntimeError as err:
                raise self._explain_failure(err, shard, position) from err
            position += 1
            yield self._batch(out[0])

    def _explain_failure(self, err: RuntimeError, shard: np.ndarray, position: int) -> Exception:
        # DALI runs up to `prefetch` batches ahead and reports a failure at the next batch taken,
        # so the culprit is among these; re-checking a few hundred files takes seconds.
        size = self.cfg.batch_size
        window = shard[position * size : (position + self.cfg.prefetch + 2) * size]
        paths = list(dict.fromkeys(str(self.index.path(int(i))) for i in window))
        where = f"the {self.split} pipeline failed at batch {position} on rank {self.rank}"
        return explain_pipeline_failure(err, paths, self.split, self.index.root, where)


class TrainLoader(_Loader):
    """Training batches of one rank, epoch by epoch; resumable mid-epoch (see the module docstring),
    on this layout exactly, or on another (world size, batch size, accumulation) with the epoch's
    unseen images each seen once (vigsp/data/epoch_plan.py).

    Usage::

        loader = TrainLoader(cfg.data, rank=rank, world_size=world, state=saved.get("data"))
        for epoch in range(loader.epoch, epochs):
            for batch in loader.iter_epoch(epoch):
                ...
                saved["data"] = loader.state_dict()   # when checkpointing

    ``progress`` is the run-wide part of the position (the same on every rank): restored alone, as
    after a resume on another world size, it continues the epoch without this rank's DALI state.
    """

    split = "train"

    def __init__(
        self,
        cfg: DataConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        index: ImageIndex | None = None,
        classes: tuple[str, ...] | None = None,
        superpixel_step: StepSetting = "auto",
        device_id: int | None = None,
        state: dict[str, Any] | None = None,
        outputs: Sequence[str] = GRAPH_OUTPUTS,
        accum: int = 1,
    ) -> None:
        super().__init__(
            cfg,
            rank=rank,
            world_size=world_size,
            index=index,
            classes=classes,
            superpixel_step=superpixel_step,
            device_id=device_id,
            outputs=outputs,
        )
        self.layout = Layout(world_size, cfg.batch_size, accum)
        self.full_batches = len(self.index) // (world_size * cfg.batch_size)  # per rank, per epoch
        if self.full_batches == 0:
            raise UserError(
                f"the training split has {len(self.index)} images, fewer than one global batch "
                f"({world_size} rank(s) x data.batch_size {cfg.batch_size}); lower data.batch_size"
            )
        # Micro batches per rank in a fresh epoch, whole optimizer steps only.
        self.steps_per_epoch = first_segment(np.arange(len(self.index)), self.layout).micro_batches
        self.epoch = 0
        self._history: list[Segment] = []  # the current epoch's earlier segments (other layouts)
        self._step = 0  # micro batches taken in the current segment
        self._dali: bytes | None = None  # DALI's state at (epoch, history, step), when known
        self._iterator: DALIGenericIterator | None = None
        self.progress = _RunWideProgress(self)
        self.load_state_dict(state)

    def _fingerprint(self) -> dict[str, int]:
        # What an epoch's permutation depends on; if any differs, a saved position means nothing.
        return {
            "images": len(self.index),
            "seed": self.cfg.resolved_seed,
            "repeated_augment": self.cfg.augmentation.repeated_augment,
        }

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Sample ids of the whole epoch in reading order for the epoch's first layout: a fresh
        permutation, drawn from (data.seed, epoch), the same on every rank."""
        rng = np.random.default_rng([self.cfg.resolved_seed, epoch])
        order = rng.permutation(len(self.index))
        repeats = self.cfg.augmentation.repeated_augment
        if repeats == 1:
            return order
        # timm's RASampler: copies of an image go to consecutive ranks, each augmented differently;
        # laid out as rank blocks, which is how the first segment shards it.
        first = self._history[0].layout if self._history and self.epoch == epoch else self.layout
        world = first.world_size
        per_rank = len(order) // (world * first.batch_size) * first.batch_size
        repeated = np.repeat(order, repeats)
        return np.concatenate([repeated[r::world][:per_rank] for r in range(world)])

    def epoch_plan(self, epoch: int) -> SegmentPlan:
        """What this layout reads of ``epoch``: the whole epoch, or what its earlier segments left."""
        history = self._history if epoch == self.epoch else []
        return current_segment(self.epoch_order(epoch), history, self.layout)

    def batches_left(self, epoch: int) -> int:
        """Micro batches this rank has still to take in ``epoch``."""
        if epoch != self.epoch:
            return self.steps_per_epoch
        return self.epoch_plan(epoch).micro_batches - self._step

    def _pipeline_seed(self, epoch: int) -> int:
        # A continuation segment draws its augmentations afresh (its own stream).
        key = [self.cfg.resolved_seed, epoch, self.rank, *([len(self._history)] if self._history else [])]
        return int(np.random.SeedSequence(key).generate_state(1)[0] >> 1)

    def iter_epoch(self, epoch: int) -> Iterator[Batch]:
        """This rank's batches of ``epoch`` (the rest of them, when resuming).

        Leaving the loop early keeps the position: ``state_dict()`` and a later ``iter_epoch(epoch)``
        continue after the last batch taken.
        """
        if epoch != self.epoch:
            self.epoch, self._history, self._step, self._dali = epoch, [], 0, None
        if self._step and self._dali is None:
            # Restored without this rank's DALI state (another world size resumed, or the rank files
            # were not this layout's): what is left of the segment continues as a new one.
            self._history, self._step = [*self._history, Segment(self.layout, self._step)], 0
        plan = self.epoch_plan(epoch)
        if plan.dropped:
            log.warning(
                "data: %d image(s) of epoch %d cannot be placed in whole batches on %d rank(s) "
                "and are left to the next epoch",
                plan.dropped,
                epoch,
                self.layout.world_size,
            )
        pipe = self._pipeline(
            "train", plan.files, self._pipeline_seed(epoch), self._dali, pad_last_batch=plan.partial
        )
        policy = LastBatchPolicy.PARTIAL if plan.partial else LastBatchPolicy.DROP
        self._iterator = DALIGenericIterator(
            [pipe], list(self.output_names), reader_name=READER_NAME, last_batch_policy=policy
        )
        batches = self._iterate(self._iterator, plan.shard(self.rank), self._step)
        try:
            while self._step < plan.micro_batches:
                batch = next(batches)
                self._step += 1
                yield batch
        except GeneratorExit:  # the caller left the loop: remember where, before the pipeline goes
            try:
                self._dali = self._dali_state()
            except Exception:  # at interpreter exit DALI may be gone already; nothing left to resume
                log.debug("data: no position kept for the abandoned epoch %d", epoch, exc_info=True)
            raise
        finally:
            batches.close()
            self._iterator = None
        self.epoch, self._history, self._step, self._dali = epoch + 1, [], 0, None

    def _dali_state(self) -> bytes | None:
        if self._iterator is not None and self._step:
            return self._iterator.checkpoints()[0]
        return self._dali

    def _position(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "history": [s.to_list() for s in self._history],
            "step": self._step,
            "fingerprint": self._fingerprint(),
            "layout": list(astuple(self.layout)),
        }

    def _restore_position(self, state: dict[str, Any]) -> bool:
        """Take the position ``state`` names; False (and a fresh epoch) when it does not fit."""
        if state["fingerprint"] != self._fingerprint():
            changed = {k: (state["fingerprint"].get(k), v) for k, v in self._fingerprint().items()}
            changed = {k: pair for k, pair in changed.items() if pair[0] != pair[1]}
            log.warning(
                "data: %s changed since the checkpoint (%s); restarting epoch %d from its beginning",
                ", ".join(changed),
                ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in changed.items()),
                state["epoch"],
            )
            self.epoch, self._history, self._step, self._dali = state["epoch"], [], 0, None
            return False
        self.epoch = state["epoch"]
        self._history = [Segment.from_list(s) for s in state["history"]]
        self._step = state["step"]
        if state.get("layout") is not None and Layout(*state["layout"]) != self.layout and self._step:
            # Saved under another layout: that segment ends here and the rest is a new one.
            self._history, self._step = [*self._history, Segment(Layout(*state["layout"]), self._step)], 0
        self._dali = None
        return True

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Continue where ``state`` (from ``state_dict()``, this rank's) was, at the next ``iter_epoch``."""
        if not state:
            return
        state = _upgrade(state)
        if self._restore_position(state) and Layout(*state["layout"]) == self.layout and state["dali"]:
            self._dali = base64.b64decode(state["dali"])

    def state_dict(self) -> dict[str, Any]:
        """Where this rank is: restore with ``load_state_dict`` (or ``TrainLoader(..., state=...)``).
        JSON-serialisable."""
        dali = self._dali_state()
        return {
            "version": STATE_VERSION,
            **self._position(),
            "dali": base64.b64encode(dali).decode("ascii") if dali else None,  # bytes -> JSON-safe
        }


class _RunWideProgress:
    """The loader's position without DALI's state: identical on every rank, so it is saved once
    for the run and restored on any world size (the checkpointer's run-wide states)."""

    def __init__(self, loader: TrainLoader) -> None:
        self.loader = loader

    def state_dict(self) -> dict[str, Any]:
        return self.loader._position()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader._restore_position(state)


def _upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A loader state of an older vigsp, in today's form."""
    version = state.get("version")
    if version == STATE_VERSION:
        return state
    if version == 1:  # no segments; the layout was in the fingerprint
        old = state["fingerprint"]
        fingerprint = {k: old[k] for k in ("images", "seed", "repeated_augment")}
        layout = [old["world_size"], old["batch_size"], 1]
        return {**state, "history": [], "fingerprint": fingerprint, "layout": layout}
    raise UserError(f"the data-loader state has version {version}, expected {STATE_VERSION}")


class EvalLoader(_Loader):
    """Evaluation batches of one rank; iterate it once per evaluation (see the module docstring)."""

    split = "val"

    def __init__(
        self,
        cfg: DataConfig,
        *,
        rank: int = 0,
        world_size: int = 1,
        index: ImageIndex | None = None,
        classes: tuple[str, ...] | None = None,
        superpixel_step: StepSetting = "auto",
        device_id: int | None = None,
        outputs: Sequence[str] = GRAPH_OUTPUTS,
    ) -> None:
        super().__init__(
            cfg,
            rank=rank,
            world_size=world_size,
            index=index,
            classes=classes,
            superpixel_step=superpixel_step,
            device_id=device_id,
            outputs=outputs,
        )
        if len(self.index) < world_size:
            raise UserError(
                f"the validation split has {len(self.index)} images, fewer than the {world_size} ranks"
            )
        n = len(self.index)
        # DALI's shard r is the contiguous block [floor(r n / W), floor((r+1) n / W)).
        start, stop = (rank * n) // world_size, ((rank + 1) * n) // world_size
        self.num_samples = stop - start
        self._shard = np.arange(start, stop)
        self._iterator: DALIGenericIterator | None = None
        self._complete = False

    def __iter__(self) -> Iterator[Batch]:
        """One pass over this rank's shard."""
        if self._iterator is None or not self._complete:  # first pass, or the last one was left early
            pipe = self._pipeline(
                "eval", np.arange(len(self.index)), seed=self.cfg.resolved_seed, checkpoint=None
            )
            self._iterator = DALIGenericIterator(
                [pipe],
                list(self.output_names),
                reader_name=READER_NAME,
                last_batch_policy=LastBatchPolicy.PARTIAL,
                auto_reset=True,
            )
        self._complete = False
        for batch in self._iterate(self._iterator, self._shard, 0):
            if len(batch):  # a rank with a shorter shard can get an all-padding last batch
                yield batch
        self._complete = True


def make_loaders(
    cfg: DataConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    state: dict[str, Any] | None = None,
    accum: int = 1,
    **kwargs: Any,
) -> tuple[TrainLoader, EvalLoader]:
    """Both loaders with one class list (resolved once), as the trainer wants them."""
    classes = resolve_classes(cfg)
    train = TrainLoader(
        cfg, rank=rank, world_size=world_size, classes=classes, state=state, accum=accum, **kwargs
    )
    val = EvalLoader(cfg, rank=rank, world_size=world_size, classes=classes, **kwargs)
    return train, val


__all__ = ["BadImageError", "Batch", "EvalLoader", "GraphCapacityError", "TrainLoader", "make_loaders"]
