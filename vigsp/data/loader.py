"""Batches for the model from the DALI pipelines, per rank: ``TrainLoader`` and ``EvalLoader``.

Training epochs (the policy):
  * every epoch is a fresh permutation of the training split, drawn from (data.seed, epoch), the
    same on every rank; it is cut to ``steps_per_epoch * world_size * batch_size`` images (the
    tail, different each epoch, is dropped as in DistributedSampler(drop_last=True)) and rank r
    reads block r of it (``shard_id=rank, num_shards=world_size``). So every rank runs exactly
    ``steps_per_epoch = len(train) // (world_size * batch_size)`` full batches, no image is seen
    twice in an epoch (unless data.augmentation.repeated_augment asks for it) and the ranks' images
    are disjoint;
  * ``state_dict()`` (after any batch) holds the epoch, the step and DALI's checkpoint of reader
    position and random state; a loader built with it yields exactly the batches that an
    uninterrupted one would have yielded next.

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

STATE_VERSION = 1


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
        self, kind: Literal["train", "eval"], sample_ids: np.ndarray, seed: int, checkpoint: bytes | None
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
    """Training batches of one rank, epoch by epoch; resumable mid-epoch (see the module docstring).

    Usage::

        loader = TrainLoader(cfg.data, rank=rank, world_size=world, state=saved.get("data"))
        for epoch in range(loader.epoch, epochs):
            for batch in loader.iter_epoch(epoch):
                ...
                saved["data"] = loader.state_dict()   # when checkpointing
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
        global_batch = world_size * cfg.batch_size
        self.steps_per_epoch = len(self.index) // global_batch
        if self.steps_per_epoch == 0:
            raise UserError(
                f"the training split has {len(self.index)} images, fewer than one global batch "
                f"({world_size} rank(s) x data.batch_size {cfg.batch_size}); lower data.batch_size"
            )
        self._step = 0  # batches taken from the current epoch
        self._iterator: DALIGenericIterator | None = None
        self.load_state_dict(state)

    def _fingerprint(self) -> dict[str, int]:
        # What the saved DALI reader position is relative to; if any differs it cannot be reused.
        return {
            "images": len(self.index),
            "world_size": self.world_size,
            "batch_size": self.cfg.batch_size,
            "seed": self.cfg.resolved_seed,
            "repeated_augment": self.cfg.augmentation.repeated_augment,
        }

    def _validated(self, state: dict[str, Any] | None) -> dict[str, Any] | None:
        if not state:
            return None
        if state.get("version") != STATE_VERSION:
            raise UserError(
                f"the data-loader state has version {state.get('version')}, expected {STATE_VERSION}"
            )
        if state["fingerprint"] != self._fingerprint():
            changed = {k: (state["fingerprint"].get(k), v) for k, v in self._fingerprint().items()}
            changed = {k: pair for k, pair in changed.items() if pair[0] != pair[1]}
            log.warning(
                "data: %s changed since the checkpoint (%s); restarting epoch %d from its beginning",
                ", ".join(changed),
                ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in changed.items()),
                state["epoch"],
            )
            return {**state, "dali": None, "step": 0}
        return state

    def epoch_plan(self, epoch: int) -> np.ndarray:
        """Sample ids of the whole epoch, rank r's block at [r*n, (r+1)*n) with n = steps * batch."""
        rng = np.random.default_rng([self.cfg.resolved_seed, epoch])
        order = rng.permutation(len(self.index))
        per_rank = self.steps_per_epoch * self.cfg.batch_size
        repeats = self.cfg.augmentation.repeated_augment
        if repeats == 1:
            return order[: per_rank * self.world_size]
        # timm's RASampler: copies of an image go to consecutive ranks, each augmented differently.
        repeated = np.repeat(order, repeats)
        return np.concatenate([repeated[r :: self.world_size][:per_rank] for r in range(self.world_size)])

    def _pipeline_seed(self, epoch: int) -> int:
        return int(
            np.random.SeedSequence([self.cfg.resolved_seed, epoch, self.rank]).generate_state(1)[0] >> 1
        )

    def iter_epoch(self, epoch: int) -> Iterator[Batch]:
        """This rank's ``steps_per_epoch`` batches of ``epoch`` (the rest of them, when resuming).

        Leaving the loop early keeps the position: ``state_dict()`` and a later ``iter_epoch(epoch)``
        continue after the last batch taken.
        """
        resume = self._resume if self._resume and self._resume["epoch"] == epoch else None
        self._resume = None
        plan = self.epoch_plan(epoch)
        per_rank = self.steps_per_epoch * self.cfg.batch_size
        shard = plan[self.rank * per_rank : (self.rank + 1) * per_rank]
        checkpoint = base64.b64decode(resume["dali"]) if resume and resume["dali"] else None
        pipe = self._pipeline("train", plan, self._pipeline_seed(epoch), checkpoint)
        self._iterator = DALIGenericIterator(
            [pipe], list(self.output_names), reader_name=READER_NAME, last_batch_policy=LastBatchPolicy.DROP
        )
        self.epoch = epoch
        self._step = resume["step"] if checkpoint else 0
        try:
            for batch in self._iterate(self._iterator, shard, self._step):
                self._step += 1
                yield batch
        except GeneratorExit:  # the caller left the loop: remember where, before the pipeline goes
            try:
                self._resume = self.state_dict()
            except Exception:  # at interpreter exit DALI may be gone already; nothing left to resume
                log.debug("data: no position kept for the abandoned epoch %d", epoch, exc_info=True)
            raise
        finally:
            self._iterator = None
        self.epoch, self._step = epoch + 1, 0

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Continue where ``state`` (from ``state_dict()``) was, at the next ``iter_epoch``."""
        self._resume = self._validated(state)
        self.epoch = self._resume["epoch"] if self._resume else 0

    def state_dict(self) -> dict[str, Any]:
        """Where this rank is: restore with ``load_state_dict`` (or ``TrainLoader(..., state=...)``).
        JSON-serialisable."""
        if self._iterator is None and self._resume is not None:
            return dict(self._resume)  # restored or left early, and not iterated since
        dali = None
        if self._iterator is not None and self._step:
            dali = base64.b64encode(self._iterator.checkpoints()[0]).decode("ascii")  # bytes -> JSON-safe
        return {
            "version": STATE_VERSION,
            "epoch": self.epoch,
            "step": self._step if dali else 0,
            "dali": dali,
            "fingerprint": self._fingerprint(),
        }


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
    cfg: DataConfig, *, rank: int = 0, world_size: int = 1, state: dict[str, Any] | None = None, **kwargs: Any
) -> tuple[TrainLoader, EvalLoader]:
    """Both loaders with one class list (resolved once), as the trainer wants them."""
    classes = resolve_classes(cfg)
    train = TrainLoader(cfg, rank=rank, world_size=world_size, classes=classes, state=state, **kwargs)
    val = EvalLoader(cfg, rank=rank, world_size=world_size, classes=classes, **kwargs)
    return train, val


__all__ = ["BadImageError", "Batch", "EvalLoader", "GraphCapacityError", "TrainLoader", "make_loaders"]
