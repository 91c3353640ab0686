"""MLflow experiment tracking for training runs, and the metric names ``vigsp compare`` reads.

* ``Tracker.open(...)``: the run of one training run, resumable, on rank 0 only (``tracker``).
* Metric, tag and file names shared with ``vigsp compare`` (``names``).

Importing this package does not import MLflow; ``Tracker.open`` on rank 0 does.
"""

from vigsp.tracking.names import *  # noqa: F403 (the shared names are part of this API)
from vigsp.tracking.names import __all__ as _names
from vigsp.tracking.ops import Unlogged
from vigsp.tracking.tracker import NullTracker, RunEnd, Tracker

__all__ = [*_names, "NullTracker", "RunEnd", "Tracker", "Unlogged"]
