"""Loss and timing figures of the training loop, without waiting for the device every step.

Losses stay tensors (float64, summed in the order the steps ran) until ``drain()`` reads all the
pending ones back at once: at ``run.log_every``, before a checkpoint and at an epoch's end. The
per-step rows then go to steps.csv exactly as if each had been read at its own step.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

T = TypeVar("T")


@dataclass(frozen=True)
class StepRow:
    step: int
    epoch: int
    loss: float
    lr: float

    def as_dict(self) -> dict[str, float | int]:
        return {"step": self.step, "epoch": self.epoch, "loss": self.loss, "lr": self.lr}


class _Sums:
    """Loss sum and step count over a span of steps (a logging interval, an epoch)."""

    def __init__(self, first_step: int = 0) -> None:
        self.loss = 0.0
        self.steps = 0
        self.data_s = 0.0
        self.first_step = first_step
        self.started = time.perf_counter()

    @property
    def mean_loss(self) -> float:
        return self.loss / max(self.steps, 1)


class TrainMeters:
    def __init__(self, accumulation_steps: int) -> None:
        self.accum = accumulation_steps
        self._micro_sum: Tensor | None = None  # the step being accumulated
        self._pending: list[tuple[int, int, Tensor, float]] = []
        self.interval = _Sums()
        self.epoch = _Sums()
        self.last_loss: float | None = None

    def timed(self, batches: Iterable[T]) -> Iterator[T]:
        """``batches``, counting the time spent waiting for each as data time."""
        iterator = iter(batches)
        while True:
            started = time.perf_counter()
            try:
                item = next(iterator)
            except StopIteration:
                return
            self.interval.data_s += time.perf_counter() - started
            yield item

    def add_micro_batch(self, loss: Tensor) -> None:
        share = loss.detach().double() / self.accum
        self._micro_sum = share if self._micro_sum is None else self._micro_sum + share

    def end_step(self, step: int, epoch: int, lr: float) -> None:
        assert self._micro_sum is not None, "end_step before any micro batch"
        self._pending.append((step, epoch, self._micro_sum, lr))
        self._micro_sum = None

    def drain(self) -> list[StepRow]:
        """The steps since the last drain, read back from the device in one transfer."""
        if not self._pending:
            return []
        values = torch.stack([loss for _, _, loss, _ in self._pending]).tolist()
        rows = [StepRow(s, e, v, lr) for (s, e, _, lr), v in zip(self._pending, values, strict=True)]
        self._pending.clear()
        for row in rows:
            for sums in (self.interval, self.epoch):
                sums.loss += row.loss
                sums.steps += 1
        self.last_loss = rows[-1].loss
        return rows

    def steps_in_interval(self) -> int:
        return self.interval.steps + len(self._pending)

    def new_interval(self) -> None:
        self.interval = _Sums()

    def new_epoch(self, first_step: int) -> None:
        self.epoch = _Sums(first_step)
