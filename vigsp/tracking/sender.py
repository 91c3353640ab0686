"""The background thread that owns every MLflow call of a run.

The training thread only puts operations on a bounded queue (never blocking: a full queue
drops the newest and counts it). This thread opens or resumes the run, batches metrics into
``log_batch`` calls, and on a transient failure keeps the failed batch, warns once per outage,
and retries with exponential backoff until the server answers again, then replays the queue.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vigsp.tracking.names import RUN_FILE, TAG_CHANGED_PARAMS, TAG_RESUME_COUNT, TAG_RUN_NAME
from vigsp.tracking.ops import ArtifactOp, EndOp, MetricsOp, Op, ParamsOp, TagsOp, Unlogged
from vigsp.tracking.params import METRICS_PER_BATCH, PARAMS_PER_BATCH
from vigsp.tracking.store import get_or_create_experiment, is_transient, open_client

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

log = logging.getLogger("vigsp.tracking")


@dataclass(frozen=True)
class RunSpec:
    """Which run to open: resume ``run_id`` when given and still there, else create one."""

    tracking_uri: str
    experiment: str
    run_dir: Path
    run_name: str | None = None
    run_id: str | None = None


@dataclass
class Backoff:
    """Exponential backoff with jitter; ``reset`` after a success."""

    initial_s: float = 0.5
    max_s: float = 10.0
    _next: float = field(default=0.0, init=False)

    def delay(self) -> float:
        self._next = self.initial_s if self._next == 0 else min(self.max_s, self._next * 2)
        return self._next * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = 0.0


def write_run_file(run_dir: Path, data: dict[str, Any]) -> None:
    """Atomically, so a kill mid-write never leaves a half file for the resume to trip on."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{RUN_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, run_dir / RUN_FILE)


class _Start:
    """Marker for the first pending operation: open or resume the run."""


class Sender(threading.Thread):
    def __init__(self, spec: RunSpec, queue_size: int, backoff: Backoff | None = None) -> None:
        super().__init__(name="vigsp-mlflow-sender", daemon=True)  # a hung call must not block exit
        self.spec = spec
        self.queue: queue.Queue[Op] = queue.Queue(maxsize=queue_size)
        self.backoff = backoff or Backoff()
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.resumed = False
        self.started = threading.Event()  # set once the run is open, or opening failed for good
        self.start_error: BaseException | None = None
        self.skipped_on_resume = 0  # metric values at steps the previous process already logged
        self.outages = 0
        # Owned by the training thread (submit) and by this thread, merged in ``close``.
        self.dropped = Unlogged()
        self.failed = Unlogged()
        self._client: MlflowClient | None = None
        self._last_steps: dict[str, int] = {}
        self._existing_params: dict[str, str] = {}
        self._pending: _Start | list[Op] | None = _Start()
        self._singles: deque[Op] = deque()  # ops of a rejected batch, retried one by one
        self._carry: Op | None = None  # taken from the queue but not batchable with the previous ops
        self._resume_count = 0
        self._marked_running = False
        self._healthy = True
        self._outage_since = 0.0
        self._warned_full = False
        self._closing = threading.Event()
        self._abort = threading.Event()
        self._end: EndOp | None = None
        self._lock = threading.Lock()
        self._submit_lock = threading.Lock()
        # For flush(): ops accepted by submit, and ops the sender is done with (sent or rejected).
        self._progress = threading.Condition()
        self._submitted = 0
        self._done = 0

    # ---- training thread -------------------------------------------------------------------------

    def submit(self, op: Op) -> None:
        """Never blocks (the lock is only shared with the system-metrics thread)."""
        with self._submit_lock:
            if self.start_error is not None:
                self.dropped.add(op, "run could not be opened")
                return
            try:
                self.queue.put_nowait(op)
                self._submitted += 1
                return
            except queue.Full:
                self.dropped.add(op, "queue full while MLflow was unreachable or slow")
                warn = not self._warned_full
                self._warned_full = True
        if warn:
            log.warning(
                "MLflow logging queue is full (%d operations): dropping new metrics until the "
                "tracking server catches up; the run directory's report will list them",
                self.queue.maxsize,
            )

    def flush(self, timeout_s: float) -> bool:
        """Wait until every op submitted so far is sent; returns at once while MLflow is unreachable.

        The engine calls this just before saving a checkpoint, so that a job killed later
        (SIGKILL loses the queue) resumes from a step whose metrics are all logged.
        """
        target = self._submitted
        with self._progress:
            self._progress.wait_for(
                lambda: self._done >= target or not self._healthy or self.start_error is not None,
                timeout_s,
            )
            return self._done >= target

    def close(self, end_status: str | None, timeout_s: float, http_timeout_s: float) -> Unlogged:
        """Flush for up to ``timeout_s``, set the final status, and return what was not logged."""
        self._end = EndOp(end_status) if end_status else None
        self._closing.set()
        self.join(timeout_s)
        if self.is_alive():
            self._abort.set()
            # The sender leaves after its current call, which the HTTP timeout bounds.
            self.join(http_timeout_s + 5)
        with self._lock:
            lost = Unlogged()
            lost.merge(self.dropped)
            lost.merge(self.failed)
            reason = "MLflow unreachable until the end of the run" if not self._healthy else "flush timed out"
            if self.is_alive():
                reason = "MLflow call still in flight when the run ended"
            if isinstance(self._pending, list):
                for op in self._pending:
                    lost.add(op, reason)
            for op in [*self._singles, *([self._carry] if self._carry else [])]:
                lost.add(op, reason)
            while True:
                try:
                    lost.add(self.queue.get_nowait(), reason)
                except queue.Empty:
                    break
            if self._end is not None:
                lost.add(self._end, reason)
        return lost

    # ---- sender thread ---------------------------------------------------------------------------

    def run(self) -> None:
        while not self._abort.is_set():
            with self._lock:
                if self._pending is None:
                    self._pending = self._next_batch()
                pending = self._pending
            if pending is None:
                if self._closing.is_set() and self.queue.empty() and self._carry is None:
                    if self._end is None:
                        return
                    with self._lock:
                        self._pending = [self._end]
                        self._end = None
                continue
            try:
                self._send(pending)
            except Exception as err:  # anything MLflow, requests or sqlalchemy raise
                if isinstance(pending, _Start) and not is_transient(err):
                    self._give_up_start(err)
                    return
                if not is_transient(err):
                    self._reject(pending, err)
                    continue
                self._went_offline(err)
                self._abort.wait(self.backoff.delay())
                continue
            with self._lock:
                self._pending = None
            self._came_back()
            if isinstance(pending, list):
                self._mark_done(len(pending))

    def _mark_done(self, n: int) -> None:
        with self._progress:
            self._done += n
            self._progress.notify_all()

    def _next_batch(self) -> list[Op] | None:
        """Ops that fit one ``log_batch`` call, or a single artifact or status op."""
        if self._singles:
            return [self._singles.popleft()]
        first = self._carry
        self._carry = None
        if first is None:
            try:
                first = self.queue.get(timeout=0.2)
            except queue.Empty:
                return None
        batch: list[Op] = [first]
        if isinstance(first, (ArtifactOp, EndOp)):
            return batch
        n_metrics, n_params, n_tags = _sizes(first)
        while True:
            try:
                op = self.queue.get_nowait()
            except queue.Empty:
                return batch
            m, p, t = _sizes(op)
            fits = (
                n_metrics + m <= METRICS_PER_BATCH
                and n_params + p <= PARAMS_PER_BATCH
                and n_tags + t <= PARAMS_PER_BATCH
                and n_metrics + m + n_params + p + n_tags + t <= METRICS_PER_BATCH
            )
            if isinstance(op, (ArtifactOp, EndOp)) or not fits:
                self._carry = op
                return batch
            batch.append(op)
            n_metrics, n_params, n_tags = n_metrics + m, n_params + p, n_tags + t

    def _send(self, pending: _Start | list[Op]) -> None:
        if isinstance(pending, _Start):
            self._open_run()
            return
        assert self._client is not None and self.run_id is not None
        first = pending[0]
        if isinstance(first, ArtifactOp):
            if first.path.is_dir():
                self._client.log_artifacts(self.run_id, str(first.path), first.artifact_path)
            else:
                self._client.log_artifact(self.run_id, str(first.path), first.artifact_path)
        elif isinstance(first, EndOp):
            self._client.set_terminated(self.run_id, first.status)
        else:
            self._log_batch(pending)

    def _log_batch(self, ops: list[Op]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        assert self._client is not None and self.run_id is not None
        metrics: list[Metric] = []
        params: dict[str, str] = {}
        tags: dict[str, str] = {}
        skipped = 0
        for op in ops:
            if isinstance(op, MetricsOp):
                for key, value in op.values.items():
                    # On resume, the previous process already logged up to this step.
                    if op.step <= self._last_steps.get(key, -1):
                        skipped += 1
                        continue
                    metrics.append(Metric(key, value, op.timestamp_ms, op.step))
            elif isinstance(op, ParamsOp):
                params.update(op.params)
            elif isinstance(op, TagsOp):
                tags.update(op.tags)
        params, changed = self._new_params(params)
        if changed:
            tags[TAG_CHANGED_PARAMS] = json.dumps(changed, sort_keys=True)[:5000]
        if metrics or params or tags:
            self._client.log_batch(
                self.run_id,
                metrics=metrics,
                params=[Param(k, v) for k, v in params.items()],
                tags=[RunTag(k, v) for k, v in tags.items()],
                synchronous=True,
            )
        # Only after success: a retried batch must skip the same values again.
        self.skipped_on_resume += skipped
        self._existing_params.update(params)

    def _new_params(self, params: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """Params are immutable in MLflow: on resume log only new keys, report changed ones."""
        new, changed = {}, {}
        for key, value in params.items():
            old = self._existing_params.get(key)
            if old is None:
                new[key] = value
            elif old != value:
                changed[key] = value
        if changed:
            log.warning(
                "config changed since this MLflow run started; params keep their first value, "
                "new values are in tag %s: %s",
                TAG_CHANGED_PARAMS,
                ", ".join(sorted(changed)),
            )
        return new, changed

    def _open_run(self) -> None:
        """Create or resume the run. Safe to retry: each step remembers that it is done."""
        spec = self.spec
        if self._client is None:
            self._client = open_client(spec.tracking_uri)
        client = self._client
        if self.run_id is None:
            run = self._find_run(client, spec.run_id) if spec.run_id else None
            if run is None:
                self.experiment_id = get_or_create_experiment(client, spec.experiment, spec.tracking_uri)
                tags = {TAG_RUN_NAME: spec.run_name} if spec.run_name else None
                run = client.create_run(self.experiment_id, run_name=spec.run_name, tags=tags)
            else:
                self.resumed = True
                self.experiment_id = run.info.experiment_id
                self._last_steps = _last_steps(client, run)
                self._existing_params = dict(run.data.params)
                self._resume_count = int(run.data.tags.get(TAG_RESUME_COUNT, "0")) + 1
            self.run_id = run.info.run_id
        if self.resumed and not self._marked_running:
            client.update_run(self.run_id, status="RUNNING")
            client.set_tag(self.run_id, TAG_RESUME_COUNT, str(self._resume_count))
            self._marked_running = True
        write_run_file(
            spec.run_dir,
            {
                "run_id": self.run_id,
                "experiment_id": self.experiment_id,
                "experiment": spec.experiment,
                "tracking_uri": spec.tracking_uri,
            },
        )
        log.info(
            "MLflow run %s %s (experiment %s) at %s",
            self.run_id,
            "resumed" if self.resumed else "created",
            spec.experiment,
            spec.tracking_uri,
        )
        with self._lock:
            self._pending = None
        self.started.set()

    def _find_run(self, client: MlflowClient, run_id: str) -> Run | None:
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(run_id)
        except MlflowException as err:
            if is_transient(err):
                raise
            log.warning("MLflow run %s not found at %s: starting a new run", run_id, self.spec.tracking_uri)
            return None
        if run.info.lifecycle_stage == "deleted":
            log.warning("MLflow run %s was deleted: starting a new run", run_id)
            return None
        return run

    def _give_up_start(self, err: BaseException) -> None:
        self.start_error = err  # from now on ``submit`` counts ops as lost instead of queueing
        log.warning("could not open an MLflow run at %s: %s", self.spec.tracking_uri, err)
        with self._lock:
            self._pending = None
            while True:
                try:
                    self.failed.add(self.queue.get_nowait(), "run could not be opened")
                except queue.Empty:
                    break
        self.started.set()
        self._mark_done(0)  # wake a waiting flush

    def _reject(self, ops: list[Op], err: BaseException) -> None:
        """MLflow refused the batch: retry its ops alone so one bad op loses only itself."""
        with self._lock:
            self._pending = None
            if len(ops) > 1:
                self._singles.extend(ops)
                return
            message = getattr(err, "message", None) or str(err)
            self.failed.add(ops[0], f"rejected by MLflow: {message[:200]}")
        log.warning("MLflow rejected a logging call: %s", message[:500])
        self._mark_done(1)

    def _went_offline(self, err: BaseException) -> None:
        if self._healthy:
            self._healthy = False
            self.outages += 1
            self._outage_since = time.monotonic()
            log.warning(
                "MLflow tracking at %s is unreachable (%s). Training continues; up to %d logging "
                "calls are queued and replayed when it is back.",
                self.spec.tracking_uri,
                str(err).splitlines()[0][:300],
                self.queue.maxsize,
            )
            self._mark_done(0)  # wake a waiting flush: it does not wait on a dead server

    def _came_back(self) -> None:
        self.backoff.reset()
        if not self._healthy:
            self._healthy = True
            log.info(
                "MLflow tracking at %s reachable again after %.0f s; replaying %d queued calls",
                self.spec.tracking_uri,
                time.monotonic() - self._outage_since,
                self.queue.qsize(),
            )


def _last_steps(client: MlflowClient, run: Run) -> dict[str, int]:
    """The largest step logged for each metric of ``run``."""
    # run.data holds each metric's latest entry, which MLflow defines as the one at the largest
    # step: no need to page through the whole history of a long run.
    latest = getattr(run.data, "_metric_objs", None)
    if latest is not None:
        return {m.key: m.step for m in latest}
    return {
        key: max(m.step for m in client.get_metric_history(run.info.run_id, key)) for key in run.data.metrics
    }


def _sizes(op: Op) -> tuple[int, int, int]:
    if isinstance(op, MetricsOp):
        return len(op.values), 0, 0
    if isinstance(op, ParamsOp):
        return 0, len(op.params), 0
    if isinstance(op, TagsOp):
        return 0, 0, len(op.tags)
    return 0, 0, 0
