"""The background thread that owns every MLflow call of a run: one queue, one worker.

The training thread only enqueues: a full queue drops the newest op and counts it, never waits.
The worker takes the head of the queue, batches what fits one ``log_batch`` call and sends it.
A transient failure keeps the batch and retries it with exponential backoff (one warning per
outage); the queue replays once the server answers again. Control items travel on the same
queue so that they keep their place in line: a flush marker is reached once everything before
it is done, and ``close`` enqueues the final status and then a stop item.
"""

from __future__ import annotations

import functools
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from vigsp.tracking.ops import EndOp, MetricsOp, Op, ParamsOp, TagsOp, Unlogged
from vigsp.tracking.params import METRICS_PER_BATCH, PARAMS_PER_BATCH
from vigsp.tracking.run import MlflowRun, RunSpec
from vigsp.tracking.store import is_transient

__all__ = ["Backoff", "RunSpec", "Sender"]

log = logging.getLogger("vigsp.tracking")

QUEUE_FULL = "queue full while MLflow was unreachable or slow"
NOT_OPENED = "run could not be opened"
FLUSH_POLL_S = 0.05  # how often a waiting flush looks whether the server went down meanwhile


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


class _Flush:
    """Set by the worker when it reaches this marker: everything enqueued before is done."""

    def __init__(self) -> None:
        self.done = threading.Event()


class _Stop:
    """The last item ``close`` enqueues: the worker leaves when it reaches it."""


Item = Op | _Flush | _Stop


class _Aborted(Exception):
    """``close`` stopped waiting during a backoff: the worker leaves what it holds to the report."""


class _Queue(queue.Queue[Item]):
    def put_control(self, item: Item) -> None:
        """Past the bound: a flush marker or the end must never be dropped nor wait for room."""
        with self.not_full:
            self._put(item)
            self.unfinished_tasks += 1
            self.not_empty.notify()


class Sender(threading.Thread):
    """The worker. Its state: the run (``mlflow``), the backoff and outage, what it holds, the counts."""

    def __init__(self, spec: RunSpec, queue_size: int, backoff: Backoff | None = None) -> None:
        super().__init__(name="vigsp-mlflow-sender", daemon=True)  # a hung call must not block exit
        self.spec = spec
        self.queue = _Queue(maxsize=queue_size)
        self.backoff = backoff or Backoff()
        self.mlflow = MlflowRun(spec)
        self.started = threading.Event()  # set once the run is open, or opening failed for good
        self.start_error: BaseException | None = None
        self.outages = 0
        self.outage_since: float | None = None  # monotonic start of the current outage
        self.dropped = Unlogged()  # by submit: never queued
        self.failed = Unlogged()  # by the worker: rejected by MLflow
        self._held: deque[Item] = deque()  # taken off the queue by the worker, not done yet
        self._warned_full = False
        self._abort = threading.Event()  # set by close when it stops waiting
        # Guards dropped, failed and _held: two threads submit, and close counts what the worker holds.
        self._lock = threading.Lock()

    @property
    def run_id(self) -> str | None:
        return self.mlflow.run_id

    @property
    def experiment_id(self) -> str | None:
        return self.mlflow.experiment_id

    @property
    def resumed(self) -> bool:
        return self.mlflow.resumed

    @property
    def skipped_on_resume(self) -> int:
        return self.mlflow.skipped_on_resume

    # ---- training thread -------------------------------------------------------------------------

    def submit(self, op: Op) -> None:
        """Never waits for MLflow: the lock is only taken to count a dropped op."""
        if self.start_error is None:
            try:
                self.queue.put_nowait(op)
                return
            except queue.Full:
                reason = QUEUE_FULL
        else:
            reason = NOT_OPENED
        with self._lock:
            self.dropped.add(op, reason)
            warn = reason == QUEUE_FULL and not self._warned_full
            self._warned_full |= warn
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
        marker = _Flush()
        self.queue.put_control(marker)
        deadline = time.monotonic() + timeout_s
        while not marker.done.wait(max(0.0, min(FLUSH_POLL_S, deadline - time.monotonic()))):
            # The marker waits behind the ops: do not wait for a server that is down.
            if self.outage_since is not None or not self.is_alive() or time.monotonic() >= deadline:
                return False
        return True

    def close(self, end_status: str | None, timeout_s: float, http_timeout_s: float) -> Unlogged:
        """Flush for up to ``timeout_s``, set the final status, and return what was not logged."""
        if end_status:
            self.queue.put_control(EndOp(end_status))
        self.queue.put_control(_Stop())
        self.join(timeout_s)
        if self.is_alive():
            self._abort.set()
            # The worker leaves after its current call, which the HTTP timeout bounds.
            self.join(http_timeout_s + 5)
        return self._leftovers()

    def _leftovers(self) -> Unlogged:
        if self.start_error is not None:
            reason = NOT_OPENED
        elif self.is_alive():
            reason = "MLflow call still in flight when the run ended"
        elif self.outage_since is not None:
            reason = "MLflow unreachable until the end of the run"
        else:
            reason = "flush timed out"
        lost = Unlogged()
        with self._lock:
            lost.merge(self.dropped)
            lost.merge(self.failed)
            for item in [*self._held, *_drain(self.queue)]:
                if not isinstance(item, (_Flush, _Stop)):
                    lost.add(item, reason)
        return lost

    # ---- worker thread ---------------------------------------------------------------------------

    def run(self) -> None:
        try:
            err = self._retry(self._open)
            if err is not None:
                self._give_up_start(err)
                return
            self._work()
        except _Aborted:
            pass  # close counts what is left in hand and in the queue

    def _open(self) -> None:
        self.mlflow.open()
        self.started.set()

    def _give_up_start(self, err: BaseException) -> None:
        self.start_error = err  # from now on submit counts ops as lost instead of queueing
        log.warning("could not open an MLflow run at %s: %s", self.spec.tracking_uri, err)
        self.started.set()

    def _work(self) -> None:
        while not self._abort.is_set():
            if not self._held:
                self._take(block=True)
            head = self._held[0]
            if isinstance(head, _Stop):
                return
            if isinstance(head, _Flush):
                with self._lock:
                    self._held.popleft()
                head.done.set()
                continue
            self._deliver(self._batch(head))

    def _take(self, block: bool) -> Item | None:
        try:
            item = self.queue.get(block=block)
        except queue.Empty:
            return None
        with self._lock:
            self._held.append(item)
        return item

    def _batch(self, head: Op) -> list[Op]:
        """``head`` and the ops after it that fit the same ``log_batch`` call."""
        batch = [head]
        if not isinstance(head, (MetricsOp, ParamsOp, TagsOp)):
            return batch  # artifacts and the status: one call each
        size = _sizes(head)
        while True:
            nxt = self._held[len(batch)] if len(self._held) > len(batch) else self._take(block=False)
            if not isinstance(nxt, (MetricsOp, ParamsOp, TagsOp)) or not _fits(size, _sizes(nxt)):
                return batch  # what stopped the batch stays in _held, first in line
            batch.append(nxt)
            size = tuple(a + b for a, b in zip(size, _sizes(nxt), strict=True))

    def _deliver(self, batch: list[Op]) -> None:
        """Send ``batch`` (retrying while MLflow is down) and count what MLflow refused."""
        err = self._retry(functools.partial(self.mlflow.send, batch))
        if err is not None and len(batch) > 1:
            for op in batch:  # alone, one bad op loses only itself
                self._deliver([op])
            return
        message = "" if err is None else (getattr(err, "message", None) or str(err))
        with self._lock:
            for _ in batch:
                self._held.popleft()  # the batch is the head of _held
            if err is not None:
                self.failed.add(batch[0], f"rejected by MLflow: {message[:200]}")
        if err is not None:
            log.warning("MLflow rejected a logging call: %s", message[:500])

    def _retry(self, call: Callable[[], None]) -> Exception | None:
        """Make ``call`` until it succeeds (None) or fails for good (the error).

        Transient failures wait with backoff; ``close`` giving up ends the wait with _Aborted.
        """
        while True:
            try:
                call()
            except Exception as err:  # anything MLflow, requests or sqlalchemy raise
                if not is_transient(err):
                    return err
                self._went_offline(err)
                if self._abort.wait(self.backoff.delay()):
                    raise _Aborted from err
                continue
            self._came_back()
            return None

    def _went_offline(self, err: BaseException) -> None:
        if self.outage_since is not None:
            return  # warned at the start of this outage
        self.outage_since = time.monotonic()
        self.outages += 1
        log.warning(
            "MLflow tracking at %s is unreachable (%s). Training continues; up to %d logging "
            "calls are queued and replayed when it is back.",
            self.spec.tracking_uri,
            str(err).splitlines()[0][:300] if str(err) else type(err).__name__,
            self.queue.maxsize,
        )

    def _came_back(self) -> None:
        self.backoff.reset()
        if self.outage_since is None:
            return
        log.info(
            "MLflow tracking at %s reachable again after %.0f s; replaying %d queued calls",
            self.spec.tracking_uri,
            time.monotonic() - self.outage_since,
            self.queue.qsize(),
        )
        self.outage_since = None


def _drain(q: queue.Queue[Item]) -> Iterator[Item]:
    while True:
        try:
            yield q.get_nowait()
        except queue.Empty:
            return


def _sizes(op: Op) -> tuple[int, ...]:
    """(metrics, params, tags) in ``op``."""
    if isinstance(op, MetricsOp):
        return len(op.values), 0, 0
    if isinstance(op, ParamsOp):
        return 0, len(op.params), 0
    if isinstance(op, TagsOp):
        return 0, 0, len(op.tags)
    return 0, 0, 0


def _fits(size: tuple[int, ...], extra: tuple[int, ...]) -> bool:
    """MLflow's limits on one ``log_batch``: per kind, and on all entries together."""
    metrics, params, tags = (a + b for a, b in zip(size, extra, strict=True))
    return (
        metrics <= METRICS_PER_BATCH
        and params <= PARAMS_PER_BATCH
        and tags <= PARAMS_PER_BATCH
        and metrics + params + tags <= METRICS_PER_BATCH
    )
