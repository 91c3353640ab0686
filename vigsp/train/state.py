"""The small pieces of training state that are not the model: each owns ``state_dict()`` and
``load_state_dict()`` and is registered once with the checkpointer (vigsp/train/checkpoint.py).

* :class:`TrainState`: where training is (epoch, step, best accuracy, last epoch's figures);
  the same on every rank.
* :class:`WallClock`: training seconds over every process of the run.
* :class:`RngState`: this rank's Python, NumPy and torch generators (dropout, stochastic depth).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import torch

__all__ = ["RngState", "TrainState", "WallClock"]


@dataclass
class TrainState:
    """Where training is. Saved in every checkpoint and identical on every rank."""

    epoch: int = 0  # the epoch being trained (or next, after its end)
    global_step: int = 0  # optimizer steps done
    best_top1: float = -math.inf
    resumes: int = 0
    last_eval_epoch: int = 0  # completed epochs whose evaluation is logged
    # The last completed epoch's figures (None until there is one).
    epoch_loss: float | None = None
    epoch_img_per_s: float | None = None
    val_top1: float | None = None
    val_top5: float | None = None
    val_loss: float | None = None
    # [first step, world size] of each stretch of the run on one world size (elastic resumes).
    world_sizes: list[list[int]] = field(default_factory=list)

    def record_world_size(self, world_size: int) -> bool:
        """Note the world size this process trains on; whether it differs from the last one."""
        if self.world_sizes and self.world_sizes[-1][1] == world_size:
            return False
        self.world_sizes.append([self.global_step, world_size])
        return True

    def world_size_history(self) -> str:
        return ", ".join(f"{world} rank(s) from step {step}" for step, world in self.world_sizes)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        known = {f.name for f in fields(self)}
        for key, value in state.items():
            if key in known:
                setattr(self, key, value)

    def metrics(self) -> dict[str, float]:
        """The last epoch's figures that exist, for the launcher's summary line."""
        names = ("epoch_loss", "epoch_img_per_s", "val_top1", "val_top5", "val_loss")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


class WallClock:
    """Training seconds: those of earlier processes of the run plus this one's so far."""

    def __init__(self) -> None:
        self._before = 0.0
        self._started = time.perf_counter()

    def elapsed(self) -> float:
        return self._before + time.perf_counter() - self._started

    def state_dict(self) -> dict[str, float]:
        return {"wall_s": self.elapsed()}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self._before, self._started = float(state["wall_s"]), time.perf_counter()


class RngState:
    """This rank's global generators. A fresh run (or one resumed on another world size, whose
    rank files do not fit) seeds torch per rank and step instead, so ranks drop different units."""

    def __init__(self, seed: int, rank: int) -> None:
        self.seed = seed
        self.rank = rank

    def reseed(self, step: int) -> None:
        torch.manual_seed(self.seed + 1000 * self.rank + max(step, 1))

    def state_dict(self) -> dict[str, Any]:
        state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
