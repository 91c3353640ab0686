"""Checkpoints of a run directory: every file of a tag, saved by all ranks together, marked
complete, kept K + best, found again on resume.

Layout under ``run_dir/checkpoints/``::

    step_00000500/            one tag:
        mp_rank_00_model_states.pt, *optim_states.pt   DeepSpeed's save_checkpoint: weights,
                              optimizer, LR scheduler, and the run-wide states in client_state
        vigsp_state.pt        the resolved config and world size, read before anything is built
                              (the resume compatibility check)
        rank_00000.pt ...     each rank's own states (data-loader position, RNG, mixup draws)
        COMPLETE              written last, by rank 0, once every rank has saved
    latest                    the name of the newest complete tag; replaced atomically
    best.json                 the tag with the best validation top-1 (kept out of the rotation)

What goes into a tag is registered once (``register``): objects with ``state_dict()`` and
``load_state_dict()``, run-wide (identical on every rank, saved once in DeepSpeed's
client_state) or per rank. A save writes the new tag directory first and only then, after
every rank has finished and ``COMPLETE`` is written, replaces ``latest`` with ``os.replace``.
A process killed anywhere during a save leaves ``latest`` naming the previous, complete
checkpoint; the next start deletes the half-written directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Protocol

import torch

from vigsp.errors import UserError
from vigsp.train.distributed import DistEnv, barrier

log = logging.getLogger(__name__)

LATEST = "latest"
BEST = "best.json"
COMPLETE = "COMPLETE"
META_FILE = "vigsp_state.pt"
# What the run-wide client_state looks like; a tag of another version is refused by name.
CLIENT_STATE_VERSION = 2
# Fault injection for tests: seconds to sleep between the DeepSpeed files and COMPLETE.
FAULT_SLEEP_ENV = "VIGSP_FAULT_SLEEP_IN_CHECKPOINT_S"


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def rank_file(tag_dir: Path, rank: int) -> Path:
    return tag_dir / f"rank_{rank:05d}.pt"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with tmp.open("w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


class CheckpointManager:
    """Owns ``run_dir/checkpoints``: what a tag holds, when one is due, ``latest``, rotation, best."""

    def __init__(
        self,
        run_dir: Path,
        env: DistEnv,
        keep_last: int,
        keep_best: bool,
        every_n_steps: int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.dir = run_dir / "checkpoints"
        self.env = env
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.every_n_steps = every_n_steps
        self.meta = meta or {}
        self.engine: Any = None
        self.run_wide: dict[str, Stateful] = {}
        self.per_rank: dict[str, Stateful] = {}
        if env.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)

    def register(self, name: str, obj: Stateful, *, per_rank: bool = False) -> None:
        (self.per_rank if per_rank else self.run_wide)[name] = obj

    def register_all(self, objects: dict[str, Stateful | None], *, per_rank: bool = False) -> None:
        """``register`` each named object that is not None (an optional part that is off)."""
        for name, obj in objects.items():
            if obj is not None:
                self.register(name, obj, per_rank=per_rank)

    def register_engine(self, engine: Any) -> None:
        """The DeepSpeed engine: weights, optimizer and LR scheduler, in DeepSpeed's own files."""
        self.engine = engine

    def due(self, step: int) -> bool:
        return self.every_n_steps is not None and step % self.every_n_steps == 0

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

    def resume_dir(self, setting: str | Path) -> Path | None:
        """The tag ``checkpoint.resume`` points at: auto = ``latest`` (None before the first save)."""
        if setting == "never":
            if self.complete_tags():
                raise UserError(
                    f"{self.dir.parent} already holds checkpoints and checkpoint.resume=never would "
                    "overwrite them; choose another run.name, delete the directory, or use "
                    "checkpoint.resume=auto"
                )
            return None
        if setting == "auto":
            tag = self.latest_tag()
            return self.dir / tag if tag else None
        path = Path(setting).resolve()
        if not path.is_dir():
            raise UserError(f"checkpoint.resume={setting}: no such checkpoint directory")
        return path

    @staticmethod
    def read_meta(tag_dir: Path) -> dict[str, Any]:
        """What ``tag_dir`` was written by: {"config": resolved config dict, "world_size": W}."""
        return torch.load(tag_dir / META_FILE, weights_only=False)

    def remove_incomplete(self) -> None:
        """Half-written tags from a process killed during a save (rank 0, before anything else)."""
        if not self.env.is_main or not self.dir.is_dir():
            return
        for path in self.dir.iterdir():
            if path.is_dir() and path.name.startswith("step_") and not (path / COMPLETE).is_file():
                log.warning("removing the incomplete checkpoint %s (its save was interrupted)", path)
                shutil.rmtree(path, ignore_errors=True)

    # ---- writing -------------------------------------------------------------------------------

    def save(self, step: int, best_top1: float | None = None, epoch: int | None = None) -> Path:
        """Called on every rank at the same step; ``best_top1``: this tag is the new best."""
        tag = tag_for(step)
        tag_dir = self.dir / tag
        started = time.perf_counter()
        # Every state is taken before DeepSpeed writes anything, so all of them describe this step.
        client_state = {
            "version": CLIENT_STATE_VERSION,
            "world_size": self.env.world_size,
            "states": {name: obj.state_dict() for name, obj in self.run_wide.items()},
        }
        rank_states = {name: obj.state_dict() for name, obj in self.per_rank.items()}
        if self.env.is_main:
            tag_dir.mkdir(parents=True, exist_ok=True)
            torch.save({**self.meta, "world_size": self.env.world_size}, tag_dir / META_FILE)
        self.engine.save_checkpoint(str(self.dir), tag=tag, client_state=client_state, save_latest=False)
        torch.save(rank_states, rank_file(tag_dir, self.env.rank))
        if os.environ.get(FAULT_SLEEP_ENV):
            time.sleep(float(os.environ[FAULT_SLEEP_ENV]))
        barrier(self.env)
        if self.env.is_main:
            _write_atomic(tag_dir / COMPLETE, f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
            _write_atomic(self.dir / LATEST, tag + "\n")
            if best_top1 is not None:
                self.mark_best(tag, best_top1, epoch if epoch is not None else -1)
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

    def load(self, tag_dir: Path) -> bool:
        """Restore the engine and every registered state from ``tag_dir``. Returns whether this
        rank's own states were restored: not when the tag was written by another world size."""
        if not (tag_dir / COMPLETE).is_file():
            raise UserError(f"{tag_dir} is not a complete vigsp checkpoint (no {COMPLETE} file)")
        path, client_state = self.engine.load_checkpoint(
            str(tag_dir.parent), tag=tag_dir.name, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise UserError(f"DeepSpeed could not load {tag_dir}; see the log above")
        client_state = client_state or {}
        if client_state.get("version") != CLIENT_STATE_VERSION:
            raise UserError(
                f"{tag_dir} was written by another vigsp version (training state version "
                f"{client_state.get('version')}, this vigsp reads {CLIENT_STATE_VERSION}); resume it with "
                "the vigsp that wrote it, or start afresh with checkpoint.resume=never in a new run.name"
            )
        saved = client_state["states"]
        for name, obj in self.run_wide.items():
            if name in saved:
                obj.load_state_dict(saved[name])
        own = rank_file(tag_dir, self.env.rank)
        if client_state["world_size"] != self.env.world_size or not own.is_file():
            return False
        rank_states = torch.load(own, weights_only=False)
        for name, obj in self.per_rank.items():
            if name in rank_states:
                obj.load_state_dict(rank_states[name])
        return True
