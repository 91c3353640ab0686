"""Writes that survive a crash of the machine, not only of the process.

``os.replace`` makes a new name atomic, but after a power loss or a kernel panic the new name can
be on disk while the data it names is not, unless the data is fsynced first and the directory
holding the name after. Checkpoint tags, ``COMPLETE``, ``latest`` and the run lease are written
through these helpers, in that order.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir", "fsync_file", "write_atomic"]


def fsync_file(path: Path) -> None:
    """Flush ``path``'s data to stable storage (call it on the host that wrote the file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make the names created, renamed or removed in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str, *, durable_dir: bool = True) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new content, never a
    mix; the data is fsynced before the rename and the directory after it."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if durable_dir:
        fsync_dir(path.parent)
