"""Rank 0's progress bar: steps, loss, lr, images/s (all ranks) and data-wait time per step."""

from __future__ import annotations

import sys
import time
from collections import deque

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, initial: int, enabled: bool, images_per_step: int) -> None:
        interactive = sys.stderr.isatty()
        self.images_per_step = images_per_step
        self._times: deque[float] = deque([time.perf_counter()], maxlen=21)  # rate over the last 20 steps
        self.bar = tqdm(
            total=total,
            initial=initial,
            disable=not enabled,
            desc="train",
            unit="step",
            dynamic_ncols=True,
            # In Slurm logs (no terminal) a line every 30 s, not a carriage-return stream.
            mininterval=0.5 if interactive else 30.0,
            file=sys.stderr,
        )

    def update(self, loss: float | None, lr: float, data_s_per_step: float) -> None:
        """One step done; ``loss``: the latest one read back (the loop reads it at log steps)."""
        if self.bar.disable:
            return
        self._times.append(time.perf_counter())
        rate = (len(self._times) - 1) / max(self._times[-1] - self._times[0], 1e-9)
        self.bar.set_postfix(
            loss="-" if loss is None else f"{loss:.4f}",
            lr=f"{lr:.2e}",
            img_s=f"{rate * self.images_per_step:,.0f}",
            data=f"{data_s_per_step * 1000:.0f}ms",
            refresh=False,
        )
        self.bar.update(1)

    def write(self, message: str) -> None:
        if not self.bar.disable:
            self.bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self.bar.close()
