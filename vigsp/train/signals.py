"""Stop requests from the scheduler: SIGUSR2 (Slurm's --signal, preemption) and SIGTERM.

The handler only sets a flag. The training loop reads it at each optimizer-step boundary, the
ranks agree on it with an all-reduce, save one checkpoint together, and return. Saving inside
a handler would interrupt a collective on one rank only and deadlock the others. USR1 is left
alone: NCCL uses it.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class StopFlag:
    """Context manager installing the handlers; restores the previous ones (submitit's) on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            # Python runs handlers in the main thread between bytecodes; logging's locks are re-entrant.
            log.warning(
                "received %s: stopping at the next step boundary to checkpoint", signal.Signals(signum).name
            )

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
