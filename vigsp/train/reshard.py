"""Resuming on another number of ranks when each rank holds only a shard of the optimizer state
(ZeRO 1 and 2, and DeepSpeed's bf16 optimizer on GPUs at any stage).

Such a tag is converted once, by rank 0, to DeepSpeed's *universal checkpoint* (every parameter's
fp32 weights and Adam moments whole, one file each), cached inside the tag, and loaded from there
with ``checkpoint.load_universal``, which re-partitions it for the new world size:

    checkpoints/step_00000020/            the tag as W ranks wrote it (verified by its COMPLETE)
        universal/COMPLETE                manifest of the converted copy; written last
        universal/step_00000020/          mp_rank_00_model_states.pt, zero/<param>/{fp32,exp_avg,...}.pt

Why DeepSpeed's format and not a reshard of our own: DeepSpeed maintains it for exactly this
(ds_to_universal + load_universal), it knows each optimizer's partitioning, alignment padding and
parameter groups, and it follows DeepSpeed's own layout changes; ours would have to chase them.

The conversion runs as DeepSpeed's own command in a subprocess (its log goes beside the copy); it
writes into ``universal.tmp`` and is renamed into place, so an interrupted conversion leaves no
half copy. A cached copy whose manifest does not verify is converted again.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from vigsp.errors import UserError
from vigsp.train.distributed import DistEnv, broadcast_object
from vigsp.train.durable import write_atomic
from vigsp.train.manifest import COMPLETE, FileEntry, Manifest, verify

log = logging.getLogger("vigsp.train")

UNIVERSAL = "universal"
CONVERT_LOG = "universal.log"

__all__ = ["UNIVERSAL", "optimizer_is_sharded", "universal_copy"]


def optimizer_is_sharded(tag_dir: Path) -> bool:
    """Whether each rank wrote only its own part of the optimizer state into ``tag_dir``: DeepSpeed's
    ``*_optim_states.pt`` files (ZeRO 1/2; its bf16 optimizer on GPUs). Read off the files, not
    the config: on the CPU, bf16 with ZeRO 0 keeps the whole state in the model file."""
    return any(tag_dir.glob("*_optim_states.pt"))


def universal_copy(tag_dir: Path, env: DistEnv) -> Path:
    """The directory to load ``tag_dir`` from as a universal checkpoint (``load_dir`` for
    DeepSpeed, with ``tag=tag_dir.name``); rank 0 converts it first if no intact copy is cached.
    Every rank calls this; a failed conversion is raised on every rank."""
    root = tag_dir / UNIVERSAL
    failure = None
    if env.is_main:
        try:
            if verify(root) or not (root / tag_dir.name).is_dir():
                _convert(tag_dir, root)
            else:
                log.info("elastic resume: using the universal copy cached in %s", root)
        except UserError as err:
            failure = str(err)
    failure = broadcast_object(failure, env)  # also the barrier: no rank loads before it exists
    if failure is not None:
        raise UserError(failure)
    return root


def _convert(tag_dir: Path, root: Path) -> None:
    work = tag_dir / f"{UNIVERSAL}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)  # a copy that does not verify
    work.mkdir()
    log_path = tag_dir / CONVERT_LOG
    workers = str(max(1, min(4, (os.cpu_count() or 1) // 2)))
    command = [
        sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal",
        "--input_folder", str(tag_dir),
        "--output_folder", str(work / tag_dir.name),
        "--num_extract_workers", workers, "--num_merge_workers", workers,
        # A checkpoint written without pipeline/tensor parallelism lacks the universal
        # metadata those would carry; DeepSpeed fills it in rather than refusing.
        "--inject_missing_state",
    ]  # fmt: skip
    log.info("elastic resume: converting %s to a universal checkpoint (log: %s)", tag_dir, log_path)
    started = time.perf_counter()
    with log_path.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
    if done.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        tail = "".join(log_path.read_text(errors="replace").splitlines(keepends=True)[-15:])
        raise UserError(
            f"could not convert {tag_dir} to a universal checkpoint for another world size "
            f"(DeepSpeed's ds_to_universal exited with {done.returncode}; full log: {log_path}):\n{tail}\n"
            f"Resume with the world size that wrote it, or resume an earlier tag with checkpoint.resume=PATH"
        )
    files = {p.relative_to(work).as_posix(): FileEntry.of(p) for p in sorted(work.rglob("*")) if p.is_file()}
    write_atomic(work / COMPLETE, Manifest(tag_dir.name, 0, files).to_json())  # 0: any world size
    work.rename(root)
    log.info("elastic resume: converted in %.1f s into %s", time.perf_counter() - started, root)
