"""Logging for a training process: rank 0 talks (stderr and run_dir/train.log), others warn only."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s [rank {rank}] %(name)s: %(message)s"


def setup_logging(run_dir: Path, rank: int) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_vigsp", False):
            root.removeHandler(handler)
    formatter = logging.Formatter(FORMAT.format(rank=rank), datefmt="%H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / "train.log"))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler._vigsp = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    level = logging.INFO if rank == 0 else logging.WARNING
    root.setLevel(level)
    logging.getLogger("vigsp").setLevel(level)
    # DeepSpeed and MLflow are chatty at INFO; their warnings still come through.
    for noisy in ("DeepSpeed", "deepspeed", "mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
