"""System metrics (CPU, memory, disk, network, GPU) sampled on rank 0's node.

Sampling reuses MLflow's monitor classes (psutil, and pynvml from ``nvidia-ml-py`` for GPUs),
but publishing goes through our sender rather than MLflow's own monitor thread, which stops
for good at the first failed call to a tracking server.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable
from typing import Any

from vigsp.tracking.names import SYSTEM_PREFIX

log = logging.getLogger("vigsp.tracking")


def _monitors() -> list[Any]:
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    monitors: list[Any] = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    try:
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        monitors.append(GPUMonitor())
    except Exception as err:  # no pynvml, no driver, no GPU: all mean "no GPU metrics"
        log.debug("no GPU system metrics: %s", err)
    return monitors


class SystemSampler(threading.Thread):
    """Every ``interval_s`` takes a sample; every ``samples_per_log`` samples publishes their mean."""

    def __init__(
        self, publish: Callable[[dict[str, float]], None], interval_s: float, samples_per_log: int = 1
    ) -> None:
        super().__init__(name="vigsp-system-metrics", daemon=True)
        self.publish = publish
        self.interval_s = interval_s
        self.samples_per_log = max(1, samples_per_log)
        self._stop_event = threading.Event()
        self.monitors = _monitors()

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("psutil") is not None

    def run(self) -> None:
        taken = 0
        while not self._stop_event.wait(self.interval_s):
            try:
                for monitor in self.monitors:
                    monitor.collect_metrics()
                taken += 1
                if taken % self.samples_per_log:
                    continue
                values: dict[str, float] = {}
                for monitor in self.monitors:
                    values.update(monitor.aggregate_metrics())
                    monitor.clear_metrics()
                self.publish({SYSTEM_PREFIX + k: float(v) for k, v in values.items()})
            except Exception as err:  # a broken sensor must not end the run
                log.warning("system metrics sampling stopped: %s", err)
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
