"""Names shared by the training engine (which logs) and ``vigsp compare`` (which reads).

Two step axes, so curves line up however long an epoch is:

* step metrics are logged with ``step = global optimizer step`` (0-based);
* epoch metrics are logged with ``step = epochs completed`` (1 after the first epoch).

This module imports nothing heavy: ``vigsp compare --help`` and non-zero ranks never load MLflow.
"""

from __future__ import annotations

# Step metrics (step = global optimizer step).
TRAIN_LOSS = "train/loss"
TRAIN_LR = "train/lr"
TRAIN_IMG_PER_S = "train/img_per_s"  # images/s over all ranks, averaged over the logging interval
TRAIN_DATA_TIME = "train/data_time"  # seconds per step spent waiting for the input pipeline
TRAIN_STEP_TIME = "train/step_time"  # seconds per step, data wait included

# Epoch metrics (step = epochs completed).
EPOCH = "epoch"  # value = epochs completed, so the latest value says how far a run got
VAL_TOP1 = "val/top1"  # percent
VAL_TOP5 = "val/top5"  # percent
VAL_LOSS = "val/loss"
TRAIN_EPOCH_LOSS = "train/epoch_loss"
TRAIN_EPOCH_IMG_PER_S = "train/epoch_img_per_s"  # mean throughput of the epoch, all ranks
WALL_TIME_S = "time/wall_s"  # training wall-clock seconds so far, time spent queued excluded

STEP_METRICS = (TRAIN_LOSS, TRAIN_LR, TRAIN_IMG_PER_S, TRAIN_DATA_TIME, TRAIN_STEP_TIME)
EPOCH_METRICS = (EPOCH, VAL_TOP1, VAL_TOP5, VAL_LOSS, TRAIN_EPOCH_LOSS, TRAIN_EPOCH_IMG_PER_S, WALL_TIME_S)

# System metrics are sampled by the tracker itself (prefix, then MLflow's monitor names).
SYSTEM_PREFIX = "system/"

# Tags. The engine sets TAG_NUM_PARAMS once the model is built (``tracker.set_tags``).
TAG_NUM_PARAMS = "model.num_params"
TAG_MODEL_NAME = "model.name"  # also a param when the config has ``model.name``
TAG_GIT_COMMIT = "mlflow.source.git.commit"  # MLflow's own key, so the UI shows it
TAG_GIT_DIRTY = "vigsp.git.dirty"
TAG_RUN_DIR = "vigsp.run_dir"
TAG_RESUME_COUNT = "vigsp.resume_count"
TAG_WORLD_SIZE_HISTORY = "vigsp.world_size_history"  # "2 rank(s) from step 0, 1 rank(s) from step 6"
TAG_CHANGED_PARAMS = "vigsp.changed_params"  # config keys whose value changed on a resume
# Set when a resume skipped damaged checkpoints: which, what was wrong, and the tag used instead.
TAG_CHECKPOINT_FALLBACK = "vigsp.checkpoint_fallback"
TAG_RUN_NAME = "mlflow.runName"
TAG_USER = "mlflow.user"

DEFAULT_EXPERIMENT = "vigsp"

# The embedded store (no server): both relative to the working directory.
EMBEDDED_DB = "mlruns.db"
EMBEDDED_ARTIFACTS = "mlartifacts"

# Files the rank-0 tracker writes in the run directory.
RUN_FILE = "mlflow_run.json"  # run id and tracking URI, read back on resume
UNLOGGED_FILE = "mlflow_unlogged.jsonl"  # one line per process: what could not be logged

__all__ = [
    "DEFAULT_EXPERIMENT",
    "EMBEDDED_ARTIFACTS",
    "EMBEDDED_DB",
    "EPOCH",
    "EPOCH_METRICS",
    "RUN_FILE",
    "STEP_METRICS",
    "SYSTEM_PREFIX",
    "TAG_CHANGED_PARAMS",
    "TAG_CHECKPOINT_FALLBACK",
    "TAG_GIT_COMMIT",
    "TAG_GIT_DIRTY",
    "TAG_MODEL_NAME",
    "TAG_NUM_PARAMS",
    "TAG_RESUME_COUNT",
    "TAG_RUN_DIR",
    "TAG_RUN_NAME",
    "TAG_USER",
    "TAG_WORLD_SIZE_HISTORY",
    "TRAIN_DATA_TIME",
    "TRAIN_EPOCH_IMG_PER_S",
    "TRAIN_EPOCH_LOSS",
    "TRAIN_IMG_PER_S",
    "TRAIN_LOSS",
    "TRAIN_LR",
    "TRAIN_STEP_TIME",
    "UNLOGGED_FILE",
    "VAL_LOSS",
    "VAL_TOP1",
    "VAL_TOP5",
    "WALL_TIME_S",
]
