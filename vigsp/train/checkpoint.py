"""Checkpoints of a run directory: saved by all ranks together, marked complete, kept K + best.

Layout under ``run_dir/checkpoints/``::

    step_00000500/            one DeepSpeed tag: model, optimizer and scheduler (DeepSpeed's
                              save_checkpoint), client_state, plus rank_00000.pt, rank_00001.pt ...
                              (each rank's data-loader position and RNG states), and COMPLETE
    latest                    the name of the newest complete tag; replaced atomically
    best.json                 the tag with the best validation top-1 (kept out of the rotation)

A save writes the new tag directory first and only then, after every rank has finished and
``COMPLETE`` is written, replaces ``latest`` with ``os.replace``. A process killed anywhere
during a save leaves ``latest`` naming the previous, complete checkpoint; the next start
deletes the half-written directory.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vigsp.errors import UserError
from vigsp.train.distributed import DistEnv, barrier

log = logging.getLogger(__name__)

LATEST = "latest"
BEST = "best.json"
COMPLETE = "COMPLETE"
# Fault injection for tests: seconds to sleep between the DeepSpeed files and COMPLETE.
FAULT_SLEEP_ENV = "VIGSP_FAULT_SLEEP_IN_CHECKPOINT_S"


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def rank_file(tag_dir: Path, rank: int) -> Path:
    return tag_dir / f"rank_{rank:05d}.pt"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


class CheckpointManager:
    def __init__(self, run_dir: Path, env: DistEnv, keep_last: int, keep_best: bool) -> None:
        self.dir = run_dir / "checkpoints"
        self.env = env
        self.keep_last = keep_last
        self.keep_best = keep_best
        if env.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)

    # ---- reading -------------------------------------------------------------------------------

    def latest_tag(self) -> str | None:
        path = self.dir / LATEST
        if not path.is_file():
            return None
        tag = path.read_text().strip()
        if not (self.dir / tag / COMPLETE).is_file():
            raise UserError(
                f"{path} names {tag}, which is not a complete checkpoint; pass checkpoint.resume=PATH "
                f"with one of {', '.join(self.complete_tags()) or 'none'} or checkpoint.resume=never"
            )
        return tag

    def complete_tags(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.iterdir() if (p / COMPLETE).is_file())

    def best(self) -> dict[str, Any] | None:
        path = self.dir / BEST
        return json.loads(path.read_text()) if path.is_file() else None

    def remove_incomplete(self) -> None:
        """Half-written tags from a process killed during a save (rank 0, before anything else)."""
        if not self.env.is_main or not self.dir.is_dir():
            return
        for path in self.dir.iterdir():
            if path.is_dir() and path.name.startswith("step_") and not (path / COMPLETE).is_file():
                log.warning("removing the incomplete checkpoint %s (its save was interrupted)", path)
                shutil.rmtree(path, ignore_errors=True)

    # ---- writing -------------------------------------------------------------------------------

    def save(self, engine: Any, step: int, client_state: dict[str, Any], rank_state: dict[str, Any]) -> Path:
        """Called on every rank at the same step; returns the tag directory."""
        tag = tag_for(step)
        tag_dir = self.dir / tag
        started = time.perf_counter()
        engine.save_checkpoint(str(self.dir), tag=tag, client_state=client_state, save_latest=False)
        torch.save(rank_state, rank_file(tag_dir, self.env.rank))
        if os.environ.get(FAULT_SLEEP_ENV):
            time.sleep(float(os.environ[FAULT_SLEEP_ENV]))
        barrier(self.env)
        if self.env.is_main:
            _write_atomic(tag_dir / COMPLETE, f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
            _write_atomic(self.dir / LATEST, tag + "\n")
            self._rotate(tag)
        barrier(self.env)
        log.info("checkpoint %s saved in %.1f s", tag_dir, time.perf_counter() - started)
        return tag_dir

    def mark_best(self, tag: str, metric: float, epoch: int) -> None:
        if self.env.is_main and self.keep_best:
            _write_atomic(
                self.dir / BEST, json.dumps({"tag": tag, "val_top1": metric, "epoch": epoch}) + "\n"
            )

    def _rotate(self, newest: str) -> None:
        best = self.best()
        protected = {newest, best["tag"] if best and self.keep_best else None}
        tags = self.complete_tags()
        for tag in tags[: max(0, len(tags) - self.keep_last)]:
            if tag not in protected:
                shutil.rmtree(self.dir / tag, ignore_errors=True)

    # ---- loading -------------------------------------------------------------------------------

    def load_rank_state(self, tag_dir: Path) -> dict[str, Any]:
        """This rank's data-loader position and RNG states ({} if the tag has none for it)."""
        own = rank_file(tag_dir, self.env.rank)
        return torch.load(own, weights_only=False) if own.is_file() else {}

    def load(self, engine: Any, tag_dir: Path) -> dict[str, Any]:
        """The client_state of ``tag_dir``; weights, optimizer and scheduler go into ``engine``."""
        if not (tag_dir / COMPLETE).is_file():
            raise UserError(f"{tag_dir} is not a complete vigsp checkpoint (no {COMPLETE} file)")
        path, client_state = engine.load_checkpoint(
            str(tag_dir.parent), tag=tag_dir.name, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise UserError(f"DeepSpeed could not load {tag_dir}; see the log above")
        return client_state or {}
