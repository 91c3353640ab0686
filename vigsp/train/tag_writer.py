"""Every file a rank writes into a checkpoint tag: fsynced, checksummed, and a failed write kept.

DeepSpeed writes each checkpoint file through its pluggable checkpoint engine
(``engine.checkpoint_engine.save(state, path)``), on the rank and host that owns the file. So
``TagWriter`` wraps the engine DeepSpeed built: after each save it fsyncs the file where it was
written (fsync on another node of a shared file system would not flush this node's cache) and
records its size and checksum for the manifest. vigsp's own files go through it too.

A write that fails (a full disk, a quota, a read-only mount) is recorded instead of raised:
DeepSpeed's save runs collectives between its writes, and a rank leaving it early would leave
the others waiting forever. The ranks compare their reports after the save and fail together.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointCommitInfo, CheckpointEngine

from vigsp.errors import UserError
from vigsp.train.durable import fsync_file
from vigsp.train.manifest import FileEntry

__all__ = ["TagWriter", "WriteFailure"]

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_NOT_WRITABLE = {errno.EROFS, errno.EACCES, errno.EPERM}
# torch.save reports a full disk as "unexpected pos" without an errno; so little room left after
# a failed write says the same.
_FULL_BELOW_BYTES = 1 << 20


@dataclass(frozen=True)
class WriteFailure:
    path: str
    error: str
    kind: str  # "no_space", "not_writable" or "other"
    free_bytes: int | None


def _free_bytes(directory: Path) -> int | None:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return None


def _classify(err: BaseException, free: int | None) -> str:
    codes = {getattr(e, "errno", None) for e in (err, err.__cause__, err.__context__) if e is not None}
    if codes & _NO_SPACE or "No space left" in str(err) or (free is not None and free < _FULL_BELOW_BYTES):
        return "no_space"
    if codes & _NOT_WRITABLE:
        return "not_writable"
    return "other"


class TagWriter(CheckpointEngine):
    """DeepSpeed's checkpoint engine ``inner``, with each saved file fsynced and recorded."""

    def __init__(self, inner: CheckpointEngine) -> None:
        super().__init__()
        if inner.is_decoupled():
            raise UserError(
                f"DeepSpeed's checkpoint engine {inner.name} writes in the background; vigsp verifies "
                "each file as it is written, so remove the asynchronous checkpoint engine from the "
                "DeepSpeed settings"
            )
        self.inner = inner
        self.name = f"vigsp:{inner.name}"
        self.tag_dir = Path()
        self.written: dict[str, FileEntry] = {}
        self.failure: WriteFailure | None = None

    def begin(self, tag_dir: Path) -> None:
        self.tag_dir, self.written, self.failure = tag_dir, {}, None

    def save(self, state_dict: Any, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        if self.failure is not None:
            return  # the tag is lost already: keep up with DeepSpeed's collectives, write nothing
        try:
            self.inner.save(state_dict, str(path))
            fsync_file(path)
            entry = FileEntry.of(path)
        except Exception as err:  # any failed write loses the tag; the ranks report it together
            free = _free_bytes(path.parent)
            self.failure = WriteFailure(str(path), f"{type(err).__name__}: {err}", _classify(err, free), free)
            path.unlink(missing_ok=True)  # give back what the partial file took
            return
        self.written[path.relative_to(self.tag_dir).as_posix()] = entry

    def report(self) -> dict[str, Any]:
        """What this rank wrote into the tag, or why it could not (gathered on rank 0)."""
        return {"files": self.written, "failure": self.failure}

    # The rest is DeepSpeed's engine as it is.
    def create(self, info: CheckpointCommitInfo) -> Any:
        return self.inner.create(info)

    def load(self, path: str, map_location: Any = None) -> Any:
        return self.inner.load(path, map_location=map_location)

    def commit(self, info: CheckpointCommitInfo) -> Any:
        return self.inner.commit(info)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.inner.makedirs(path, exist_ok=exist_ok)

    def is_data_parallel_writer(self, dp_rank: int) -> bool:
        return self.inner.is_data_parallel_writer(dp_rank)

    def preserves_storage_sharing(self) -> bool:
        return self.inner.preserves_storage_sharing()

    def cleanup(self) -> None:
        self.inner.cleanup()
