"""Which images each rank reads in a training epoch, and how an epoch interrupted on one world
size continues on another with every image it had left seen exactly once.

An epoch is trained in *segments*, one per layout (world size, batch size per rank, micro batches
per optimizer step) it ran under: the first segment reads a fresh permutation of the split; a resume
under another layout starts a new segment on exactly the images the previous one left unseen.

Every segment is read the same way: DALI's reader shards the segment's ``files`` contiguously,
rank r reading ``files[floor(r n / W) : floor((r + 1) n / W)]`` a batch at a time, and each rank
trains ``micro_batches`` batches of its shard.

* The **first** segment is the epoch as it always was: the permutation cut to whole global
  batches (the tail, under one global batch, is dropped as by DistributedSampler(drop_last=True)),
  every rank trains the same number of full batches, rounded down to whole optimizer steps.
* A **continuation** (another layout, mid-epoch) reads the previous segment's unseen images in
  their order. Its last batch may be short: the ranks' shards then differ by at most one image and
  each rank's last batch holds at least one. When fewer unseen images than ranks are left for that
  last batch, images from the epoch's dropped tail (not seen in this epoch either) fill it; only when
  the tail is too short are those few images left to the next epoch, and counted in ``dropped``.
  With gradient accumulation a continuation trains whole optimizer steps, so the images of a last,
  incomplete step are ``dropped`` too (as every epoch with accumulation drops its remainder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

__all__ = ["Layout", "Segment", "SegmentPlan", "continuation", "current_segment", "first_segment"]


@dataclass(frozen=True)
class Layout:
    """How one stretch of training reads its data."""

    world_size: int
    batch_size: int  # images per rank per micro batch
    accum: int = 1  # micro batches per optimizer step


@dataclass(frozen=True)
class Segment:
    """A finished (or interrupted) stretch of an epoch: its layout and the micro batches each rank
    took in it."""

    layout: Layout
    steps: int

    def to_list(self) -> list[int]:
        return [self.layout.world_size, self.layout.batch_size, self.layout.accum, self.steps]

    @classmethod
    def from_list(cls, values: list[int]) -> Segment:
        world, batch, accum, steps = (int(v) for v in values)
        return cls(Layout(world, batch, accum), steps)


@dataclass(frozen=True)
class SegmentPlan:
    """What one segment reads: ``files`` (sample ids) sharded contiguously over the ranks."""

    files: np.ndarray
    layout: Layout
    micro_batches: int  # each rank's, trained
    partial: bool  # the last batch may be short (continuations only)
    dropped: int = 0  # unseen images this segment could not place (see the module docstring)

    def shard(self, rank: int) -> np.ndarray:
        n, world = len(self.files), self.layout.world_size
        return self.files[(rank * n) // world : ((rank + 1) * n) // world]

    def trained(self, rank: int) -> np.ndarray:
        """The images rank ``rank`` trains in the whole segment."""
        return self.shard(rank)[: self.micro_batches * self.layout.batch_size]

    def unseen_after(self, steps: int) -> np.ndarray:
        """The images of this segment no rank has taken after ``steps`` micro batches each, in
        rank order: what a continuation reads."""
        size = self.layout.batch_size
        parts = [self.trained(r)[steps * size :] for r in range(self.layout.world_size)]
        return np.concatenate(parts) if parts else self.files[:0]


def first_segment(order: np.ndarray, layout: Layout) -> SegmentPlan:
    """The epoch's first segment over the permutation ``order``."""
    global_batch = layout.world_size * layout.batch_size
    per_rank = len(order) // global_batch
    micro = per_rank // layout.accum * layout.accum
    return SegmentPlan(order[: per_rank * global_batch], layout, micro, partial=False)


def continuation(pool: np.ndarray, tail: np.ndarray, layout: Layout) -> tuple[SegmentPlan, np.ndarray]:
    """The segment that trains ``pool`` (unseen images) under ``layout``, and what is left of
    ``tail`` (the epoch's unread images) after it took any to fill its last batch."""
    world, size = layout.world_size, layout.batch_size
    micro = math.ceil(len(pool) / (world * size))
    last = len(pool) - (micro - 1) * world * size  # images of the last global batch
    dropped = 0
    if 0 < last < world:  # some rank's last batch would be empty
        need = world - last
        if len(tail) >= need:
            pool, tail = np.concatenate([pool, tail[:need]]), tail[need:]
        else:
            micro -= 1
            pool, dropped = pool[: micro * world * size], last
    whole = micro // layout.accum * layout.accum  # whole optimizer steps only
    plan = SegmentPlan(pool, layout, whole, partial=True)
    untrained = len(pool) - sum(len(plan.trained(r)) for r in range(world))
    return replace(plan, dropped=dropped + untrained), tail


def current_segment(order: np.ndarray, history: list[Segment], layout: Layout) -> SegmentPlan:
    """The plan of the segment that ``layout`` trains now, after the epoch's earlier segments
    ``history`` (each with the micro batches it took); an empty history is a fresh epoch."""
    layouts = [s.layout for s in history] + [layout]
    plan = first_segment(order, layouts[0])
    tail = order[len(plan.files) :]
    for done, following in zip(history, layouts[1:], strict=True):
        plan, tail = continuation(plan.unseen_after(done.steps), tail, following)
    return plan
