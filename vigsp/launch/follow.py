"""``vigsp submit --follow``: rank 0's log echoed while the submitting side waits."""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["LogFollower"]


class LogFollower:
    """Echoes what rank 0 writes to its stderr log (progress bar, checkpoint and MLflow lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def poll(self) -> None:
        try:
            with self.path.open("rb") as log:
                log.seek(self.offset)
                chunk = log.read()
        except FileNotFoundError:  # not started yet (pending in the queue)
            return
        self.offset += len(chunk)
        if chunk:
            sys.stderr.write(chunk.decode(errors="replace"))
            sys.stderr.flush()
