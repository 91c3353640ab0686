"""Checkpoints of a run directory: every file of a tag, saved by all ranks together, made
durable, marked complete with a manifest, kept K + best, verified and found again on resume.

Layout under ``run_dir/checkpoints/``::

    step_00000500/            one tag:
        mp_rank_00_model_states.pt, *optim_states.pt   DeepSpeed's save_checkpoint: weights,
                              optimizer, LR scheduler, and the run-wide states in client_state
        vigsp_state.pt        the resolved config and world size, read before anything is built
                              (the resume compatibility check)
        rank_00000.pt ...     each rank's own states (data-loader position, RNG, mixup draws)
        COMPLETE              the manifest (each file's size and checksum, the versions that
                              wrote it), written last by rank 0 once every rank has saved
    latest                    the name of the newest complete tag; replaced atomically
    best.json                 the tag with the best validation top-1 (kept out of the rotation)
    damaged/                  tags that failed verification on resume, moved aside (resume.py)

What goes into a tag is registered once (``register``): objects with ``state_dict()`` and
``load_state_dict()``, run-wide (identical on every rank, saved once in DeepSpeed's
client_state) or per rank. The save sequence, each step durable before the next:

1. every rank writes its files through ``TagWriter``, which fsyncs each where it was written and
   records its size and checksum; a failed write (a full disk) is reported, not raised;
2. rank 0 gathers the reports; if any rank failed, the tag is removed and every rank raises a
   ``CheckpointWriteError`` that says what happened and that ``latest`` is untouched;
3. rank 0 writes ``COMPLETE`` (fsynced, then the tag directory), then replaces ``latest``
   (fsynced, then ``checkpoints/``), then rotates.

A process or machine dying anywhere in it leaves ``latest`` naming the previous, complete
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
from vigsp.train.distributed import DistEnv, all_gather_object, barrier, broadcast_object
from vigsp.train.durable import write_atomic
from vigsp.train.lease import LeaseLost, RunLease
from vigsp.train.manifest import COMPLETE, FileEntry, Manifest, read_manifest
from vigsp.train.resume import LATEST, choose_resume, complete_tags, is_tag, read_latest
from vigsp.train.tag_writer import TagWriter, WriteFailure

log = logging.getLogger(__name__)

__all__ = ["BEST", "COMPLETE", "LATEST", "CheckpointManager", "CheckpointWriteError", "tag_for"]

BEST = "best.json"
META_FILE = "vigsp_state.pt"
# What the run-wide client_state looks like; a tag of another version is refused by name.
CLIENT_STATE_VERSION = 2
# Fault injection for tests: sleep this many seconds at one phase of every save ("files": every
# file written and fsynced, before COMPLETE; "manifest": COMPLETE written, before `latest`;
# "latest": `latest` replaced, before the rotation), announced in the log.
FAULT_SLEEP_ENV = "VIGSP_FAULT_SLEEP_IN_CHECKPOINT_S"
FAULT_PHASE_ENV = "VIGSP_FAULT_CHECKPOINT_PHASE"


class CheckpointWriteError(UserError):
    """A save failed on some rank; the message says why and what ``latest`` still holds."""


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> None: ...


def tag_for(step: int) -> str:
    return f"step_{step:08d}"


def rank_file(tag_dir: Path, rank: int) -> Path:
    return tag_dir / f"rank_{rank:05d}.pt"


def _fault_point(phase: str, tag: str) -> None:
    seconds = os.environ.get(FAULT_SLEEP_ENV)
    if seconds and os.environ.get(FAULT_PHASE_ENV, "files") == phase:
        log.warning("fault injection: sleeping %s s at the %s phase of %s", seconds, phase, tag)
        time.sleep(float(seconds))


def _versions() -> dict[str, str]:
    import deepspeed

    from vigsp import __version__

    return {"vigsp": __version__, "deepspeed": deepspeed.__version__, "torch": torch.__version__}


def _megabytes(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 2**20:,.1f} MiB"


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
        lease: RunLease | None = None,
    ) -> None:
        self.dir = run_dir / "checkpoints"
        self.env = env
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.every_n_steps = every_n_steps
        self.meta = meta or {}
        self.lease = lease  # rank 0's; checked before every save
        self.engine: Any = None
        self.writer: TagWriter | None = None
        self.resume_note: str | None = None
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
        """The DeepSpeed engine: weights, optimizer and LR scheduler, in DeepSpeed's own files,
        written through a TagWriter (fsync and checksum of each file, failures reported)."""
        self.engine = engine
        self.writer = TagWriter(engine.checkpoint_engine)
        engine.checkpoint_engine = self.writer

    def due(self, step: int) -> bool:
        return self.every_n_steps is not None and step % self.every_n_steps == 0

    # ---- reading -------------------------------------------------------------------------------

    def complete_tags(self) -> list[str]:
        return complete_tags(self.dir)

    def best(self) -> dict[str, Any] | None:
        path = self.dir / BEST
        return json.loads(path.read_text()) if path.is_file() else None

    def resume_dir(self, setting: str | Path) -> Path | None:
        """The tag ``checkpoint.resume`` points at (auto: ``latest``, None before the first save),
        verified by rank 0, which moves a damaged one aside and falls back (resume.py); every rank
        gets the same answer. ``resume_note`` says what was skipped, for the MLflow run."""
        answer: tuple[str, str | None, str | None] = ("", None, None)
        if self.env.is_main:
            try:
                choice = choose_resume(self.dir, setting, self.dir / BEST)
                answer = ("ok", str(choice.tag_dir) if choice.tag_dir else None, choice.note())
            except UserError as err:
                answer = ("error", str(err), None)
        status, value, note = broadcast_object(answer, self.env)
        if status == "error":
            raise UserError(value or "cannot choose a checkpoint to resume from")
        self.resume_note = note
        return Path(value) if value else None

    @staticmethod
    def read_meta(tag_dir: Path) -> dict[str, Any]:
        """What ``tag_dir`` was written by: {"config": resolved config dict, "world_size": W}."""
        return torch.load(tag_dir / META_FILE, weights_only=True)

    def remove_incomplete(self) -> None:
        """Half-written tags from a process killed during a save (rank 0, before anything else).
        Not the one `latest` names: that save had finished, so a missing COMPLETE there is damage,
        and the resume check moves it aside instead."""
        if not self.env.is_main or not self.dir.is_dir():
            return
        latest = read_latest(self.dir)
        for path in self.dir.iterdir():
            if path.name == latest or not (path.is_dir() and is_tag(path.name)):
                continue
            if not (path / COMPLETE).is_file():
                log.warning("removing the incomplete checkpoint %s (its save was interrupted)", path)
                shutil.rmtree(path, ignore_errors=True)

    # ---- writing -------------------------------------------------------------------------------

    def save(self, step: int, best_top1: float | None = None, epoch: int | None = None) -> Path:
        """Called on every rank at the same step; ``best_top1``: this tag is the new best."""
        self._check_lease()
        tag = tag_for(step)
        tag_dir = self.dir / tag
        started = time.perf_counter()
        # Every state is taken before anything is written, so all of them describe this step.
        client_state = {
            "version": CLIENT_STATE_VERSION,
            "world_size": self.env.world_size,
            "states": {name: obj.state_dict() for name, obj in self.run_wide.items()},
        }
        rank_states = {name: obj.state_dict() for name, obj in self.per_rank.items()}
        if self.env.is_main:
            # A tag of this step from a save that died after COMPLETE, before `latest`: superseded.
            shutil.rmtree(tag_dir, ignore_errors=True)
            tag_dir.mkdir(parents=True)
        barrier(self.env)  # the directory is fresh before any rank writes into it
        self.writer.begin(tag_dir)
        if self.env.is_main:
            self.writer.save({**self.meta, "world_size": self.env.world_size}, tag_dir / META_FILE)
        self.engine.save_checkpoint(str(self.dir), tag=tag, client_state=client_state, save_latest=False)
        self.writer.save(rank_states, rank_file(tag_dir, self.env.rank))
        _fault_point("files", tag)
        reports = all_gather_object(self.writer.report(), self.env)
        failures = [r["failure"] for r in reports if r["failure"] is not None]
        if failures:
            self._fail(tag_dir, failures)
        if self.env.is_main:
            files = {name: entry for r in reports for name, entry in r["files"].items()}
            self._publish(tag_dir, files, best_top1, epoch)
        barrier(self.env)
        log.info("checkpoint %s saved in %.1f s", tag_dir, time.perf_counter() - started)
        return tag_dir

    def _check_lease(self) -> None:
        """Every rank: stop before writing if rank 0 no longer holds the run directory."""
        lost = None
        if self.env.is_main and self.lease is not None:
            try:
                self.lease.check()
            except LeaseLost as err:
                lost = str(err)
        lost = broadcast_object(lost, self.env)
        if lost is not None:
            raise LeaseLost(lost)

    def _publish(
        self, tag_dir: Path, files: dict[str, FileEntry], best_top1: float | None, epoch: int | None
    ) -> None:
        """Rank 0: COMPLETE (the manifest), then `latest`, then best and the rotation."""
        for path in sorted(tag_dir.rglob("*")):
            name = path.relative_to(tag_dir).as_posix()
            if path.is_file() and name not in files:  # written around the checkpoint engine
                files[name] = FileEntry.of(path)
        manifest = Manifest(tag_dir.name, self.env.world_size, files, _versions())
        write_atomic(tag_dir / COMPLETE, manifest.to_json())
        _fault_point("manifest", tag_dir.name)
        write_atomic(self.dir / LATEST, tag_dir.name + "\n")
        _fault_point("latest", tag_dir.name)
        if best_top1 is not None:
            self.mark_best(tag_dir.name, best_top1, epoch if epoch is not None else -1)
        self._rotate(tag_dir.name)

    def _fail(self, tag_dir: Path, failures: list[WriteFailure]) -> None:
        """Every rank: remove the lost tag (rank 0) and raise one message that says what to do."""
        first = failures[0]
        message = self._failure_message(tag_dir, first)
        if self.env.is_main:
            shutil.rmtree(tag_dir, ignore_errors=True)
            log.error("%s", message)
        barrier(self.env)
        raise CheckpointWriteError(message)

    def _failure_message(self, tag_dir: Path, failure: WriteFailure) -> str:
        latest = read_latest(self.dir)
        previous = (
            read_manifest(self.dir / latest) if latest and (self.dir / latest / COMPLETE).is_file() else None
        )
        if failure.kind == "no_space":
            size = f"one checkpoint takes {_megabytes(previous.total_bytes)}; " if previous else ""
            what = (
                f"no space left on the device of {self.dir} while saving checkpoint {tag_dir.name} "
                f"({failure.path}: {failure.error}); free there now: {_megabytes(failure.free_bytes)} "
                f"({size}checkpoint.keep_last={self.keep_last} keeps that many, plus the best)"
            )
            todo = (
                "Free space there, lower checkpoint.keep_last, or point run.output_dir at a larger "
                "file system; then run the same command again"
            )
        elif failure.kind == "not_writable":
            what = f"cannot write checkpoint {tag_dir.name}: {failure.path} is not writable ({failure.error})"
            todo = "Make the run directory writable, or choose another run.output_dir; then run it again"
        else:
            what = f"could not write checkpoint {tag_dir.name}: {failure.path}: {failure.error}"
            todo = "Fix the cause above; then run the same command again"
        kept = (
            f"`latest` still names {latest}, which is intact: the run resumes from it."
            if latest
            else "No earlier checkpoint exists: the run starts from the beginning."
        )
        return f"{what}.\n{kept} {todo}."

    def mark_best(self, tag: str, metric: float, epoch: int) -> None:
        if self.env.is_main and self.keep_best:
            write_atomic(self.dir / BEST, json.dumps({"tag": tag, "val_top1": metric, "epoch": epoch}) + "\n")

    def _rotate(self, newest: str) -> None:
        best = self.best()
        protected = {newest, best["tag"] if best and self.keep_best else None}
        tags = self.complete_tags()
        for tag in tags[: max(0, len(tags) - self.keep_last)]:
            if tag not in protected:
                shutil.rmtree(self.dir / tag, ignore_errors=True)

    # ---- loading -------------------------------------------------------------------------------

    def load(self, tag_dir: Path, universal_root: Path | None = None) -> bool:
        """Restore the engine and every registered state from ``tag_dir`` (DeepSpeed's part from
        its universal copy ``universal_root``, if given). Returns whether this rank's own states
        were restored: not when the tag was written by another world size."""
        if not (tag_dir / COMPLETE).is_file():
            raise UserError(f"{tag_dir} is not a complete vigsp checkpoint (no {COMPLETE} file)")
        try:
            path, client_state = self.engine.load_checkpoint(
                str(universal_root or tag_dir.parent),
                tag=tag_dir.name,
                load_optimizer_states=True,
                load_lr_scheduler_states=True,
            )
        except Exception as err:
            self._explain_load_failure(tag_dir, err)
            raise
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

    @staticmethod
    def _explain_load_failure(tag_dir: Path, err: Exception) -> None:
        """A verified tag that does not load: when other versions wrote it, say so (a UserError)."""
        manifest = read_manifest(tag_dir)
        written = manifest.versions if manifest else {}
        differ = {name: v for name, v in written.items() if _versions().get(name) != v}
        if differ:
            listing = ", ".join(f"{name} {v} (this is {_versions()[name]})" for name, v in differ.items())
            raise UserError(
                f"{tag_dir} does not load ({type(err).__name__}: {err}); it was written by {listing}. "
                "Resume it with the versions that wrote it, or start afresh in a new run.name"
            ) from err
