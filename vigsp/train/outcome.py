"""What a training call returns to its launcher (``vigsp train``, ``vigsp submit``'s job)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = ["REQUEUE_EXIT_CODE", "TrainOutcome"]

# `vigsp train` exits with this when it stopped on SIGUSR2/SIGTERM after saving a checkpoint:
# the plain sbatch templates turn it into `scontrol requeue` (submitit jobs requeue themselves).
REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"


@dataclass
class TrainOutcome:
    """``finished``: the run reached its last step. ``stopped``: a stop signal (``stop_signal``)
    arrived; every rank saved a checkpoint at the same step and returned, so the run continues
    from ``checkpoint`` when started again with the same run directory."""

    status: Literal["finished", "stopped"]
    run_dir: Path
    global_step: int
    epoch: int
    stop_signal: int | None = None
    checkpoint: Path | None = None
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
