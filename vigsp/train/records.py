"""Plain-text records in the run directory: steps.csv (every optimizer step) and epochs.csv, and
with run.record_samples, samples/rank_NNNNN.csv (what each rank trained at each step).

Both are appended by rank 0 and flushed per row, so they survive a SIGKILL. On resume they
are cut back to the checkpoint, so a resumed run's files read as one uninterrupted run.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STEPS_FILE = "steps.csv"
EPOCHS_FILE = "epochs.csv"
SAMPLES_DIR = "samples"  # rank_NNNNN.csv per rank, with run.record_samples
STEP_FIELDS = ("step", "epoch", "loss", "lr")
SAMPLE_FIELDS = ("step", "epoch", "samples")  # samples: the step's training-split indices, space-separated
EPOCH_FIELDS = (
    "epoch",
    "step",
    "train_loss",
    "val_loss",
    "val_top1",
    "val_top5",
    "val_top1_ema",
    "img_per_s",
    "wall_s",
)


class CsvRecord:
    def __init__(self, path: Path, fields: Sequence[str], enabled: bool) -> None:
        self.path = path
        self.fields = tuple(fields)
        self.enabled = enabled

    def truncate(self, key: str, last: int) -> None:
        """Keep the rows with ``row[key] <= last`` (what the checkpoint being resumed covers)."""
        if not self.enabled or not self.path.is_file():
            return
        with self.path.open(newline="") as src:
            rows = [row for row in csv.DictReader(src) if row.get(key) and int(row[key]) <= last]
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as out:
            writer = csv.DictWriter(out, self.fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)

    def append(self, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        new = not self.path.is_file()
        with self.path.open("a", newline="") as out:
            writer = csv.DictWriter(out, self.fields)
            if new:
                writer.writeheader()
            writer.writerow({k: _fmt(row.get(k)) for k in self.fields})

    def create_directory(self) -> None:
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as src:
            return list(csv.DictReader(src))


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)  # every bit: resumed and uninterrupted runs compare exactly
    return "" if value is None else value
