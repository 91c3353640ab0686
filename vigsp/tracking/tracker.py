"""The tracker the training engine holds: one MLflow run per training run, on global rank 0 only.

Typical use by the engine::

    tracker = Tracker.open(cfg_dict, run_dir, rank=rank, tracking_uri=args.tracking_uri,
                           experiment=cfg.experiment, run_name=run_dir.name,
                           run_id=checkpoint.get("mlflow_run_id"))
    with tracker:
        tracker.set_tags({TAG_NUM_PARAMS: n_params})
        ...
        tracker.log_metrics({TRAIN_LOSS: loss, TRAIN_LR: lr}, step=global_step)
        tracker.log_metrics({VAL_TOP1: top1, VAL_TOP5: top5, EPOCH: epoch}, step=epoch)
        tracker.flush()  # just before each checkpoint save, so a SIGKILL leaves no gap
        if stopping_for_requeue:
            tracker.finish(RunEnd.REQUEUED)  # the MLflow run stays RUNNING for the next job

Leaving the ``with`` block normally marks the run FINISHED, an exception marks it FAILED,
KeyboardInterrupt marks it KILLED. The tracker installs no signal handlers: SIGTERM and SIGUSR2
belong to the engine's ``StopFlag``, which stops at a step boundary (``finish(REQUEUED)``).
Every call returns at once: MLflow is talked to by a background thread (see ``sender``), so a
slow or dead tracking server never stalls a step.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import Any

from vigsp.errors import UserError
from vigsp.tracking.names import DEFAULT_EXPERIMENT, RUN_FILE, TAG_RUN_DIR, UNLOGGED_FILE
from vigsp.tracking.ops import ArtifactOp, MetricsOp, ModelOp, ParamsOp, TagsOp, Unlogged
from vigsp.tracking.params import METRICS_PER_BATCH, PARAMS_PER_BATCH, chunks, config_params, to_param_value

log = logging.getLogger("vigsp.tracking")

TAG_VALUE_LIMIT = 5000  # MLflow allows 8000; leave room for servers with older limits


class RunEnd(str, Enum):
    FINISHED = "FINISHED"  # training reached its true end
    FAILED = "FAILED"  # an exception
    KILLED = "KILLED"  # Ctrl-C
    REQUEUED = "REQUEUED"  # stopped to continue in a later job: the MLflow run stays RUNNING


def end_for_exception(exc: BaseException | None) -> RunEnd:
    if exc is None:
        return RunEnd.FINISHED
    if isinstance(exc, KeyboardInterrupt):
        return RunEnd.KILLED
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        return RunEnd.FINISHED
    return RunEnd.FAILED


class NullTracker:
    """What ranks other than 0 get: the same API, doing nothing, never importing MLflow."""

    enabled = False

    @property
    def run_id(self) -> str | None:
        return None

    @property
    def tracking_uri(self) -> str | None:
        return None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        pass

    def log_model(
        self, folder: Path, register_as: str | None = None, version_tags: Mapping[str, Any] | None = None
    ) -> None:
        pass

    def log_figure(self, figure: Any, name: str) -> None:
        pass

    def flush(self, timeout_s: float = 10.0) -> bool:
        return True

    def finish(self, end: RunEnd = RunEnd.FINISHED) -> Unlogged | None:
        return None

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        return False


class Tracker(NullTracker):
    enabled = True

    @classmethod
    def open(
        cls,
        config: Mapping[str, Any],
        run_dir: str | os.PathLike[str],
        rank: int,
        tracking_uri: str | None = None,
        experiment: str = DEFAULT_EXPERIMENT,
        run_id: str | None = None,
        *,
        run_name: str | None = None,
        tags: Mapping[str, Any] | None = None,
        queue_size: int = 10_000,
        connect_timeout_s: float = 15.0,
        flush_timeout_s: float = 30.0,
        system_metrics_interval_s: float | None = 10.0,
    ) -> Tracker | NullTracker:
        """Open (or resume) the MLflow run of ``run_dir`` on rank 0; a ``NullTracker`` elsewhere.

        The run to resume is ``run_id`` (e.g. from the checkpoint), else the one recorded in
        ``run_dir/mlflow_run.json`` by an earlier job. Waits up to ``connect_timeout_s`` for
        the run to open; if the server is down, returns anyway and keeps trying in the background.
        """
        if rank != 0:
            return NullTracker()
        from vigsp.tracking.sender import RunSpec, Sender
        from vigsp.tracking.store import TRACKER_HTTP_ENV, apply_http_defaults, resolve_tracking_uri

        apply_http_defaults(TRACKER_HTTP_ENV)
        run_dir = Path(run_dir).resolve()
        uri = resolve_tracking_uri(tracking_uri)
        spec = RunSpec(uri, experiment, run_dir, run_name, run_id or _recorded_run_id(run_dir, uri))
        sender = Sender(spec, queue_size)
        tracker = cls(sender, run_dir, flush_timeout_s)
        sender.start()
        tracker.log_params(config_params(config))
        tracker.set_tags({**_provenance(), TAG_RUN_DIR: str(run_dir), **(tags or {})})
        tracker._log_config_artifact(config)
        if not sender.started.wait(connect_timeout_s):
            log.warning(
                "MLflow run not open after %.0f s at %s; training starts anyway and logging "
                "continues in the background",
                connect_timeout_s,
                uri,
            )
        elif sender.start_error is not None:
            tracker.finish(RunEnd.FAILED)
            err = sender.start_error
            from vigsp.tracking.store import auth_hint

            message = f"{getattr(err, 'message', err)}{auth_hint(err)}"
            raise UserError(f"cannot open an MLflow run at {uri}: {message}") from err
        if system_metrics_interval_s:
            tracker._start_system_metrics(system_metrics_interval_s)
        return tracker

    def __init__(self, sender: Any, run_dir: Path, flush_timeout_s: float) -> None:
        self._sender = sender
        self.run_dir = run_dir
        self.flush_timeout_s = flush_timeout_s
        self.last_step = 0
        self.unlogged: Unlogged | None = None  # set by finish
        self._sampler: Any = None
        self._finished = False
        atexit.register(self._flush_at_exit)

    @property
    def run_id(self) -> str | None:
        """None until the run is open (the server may be down when training starts)."""
        return self._sender.run_id

    @property
    def tracking_uri(self) -> str:
        return self._sender.spec.tracking_uri

    # ---- logging: all non-blocking ---------------------------------------------------------------

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Pass Python floats (call ``.item()`` at the logging interval, not every step)."""
        if self._finished:
            return
        step = int(step)
        self.last_step = step
        now_ms = int(time.time() * 1000)
        values = {k: float(v) for k, v in metrics.items()}
        for part in chunks(list(values), METRICS_PER_BATCH):
            self._sender.submit(MetricsOp({k: values[k] for k in part}, step, now_ms))

    def log_params(self, params: Mapping[str, Any]) -> None:
        items = [(k, to_param_value(v)) for k, v in params.items()]
        for part in chunks(items, PARAMS_PER_BATCH):
            self._sender.submit(ParamsOp(dict(part)))

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        items = [(k, str(v)[:TAG_VALUE_LIMIT]) for k, v in tags.items()]
        for part in chunks(items, PARAMS_PER_BATCH):
            self._sender.submit(TagsOp(dict(part)))

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Uploaded later by the sender: the file must stay in place and unchanged until then."""
        self._sender.submit(ArtifactOp(Path(path).resolve(), artifact_path))

    def log_model(
        self, folder: Path, register_as: str | None = None, version_tags: Mapping[str, Any] | None = None
    ) -> None:
        """Uploads a saved MLflow model as ``runs:/ID/model`` (and registers it as a new version
        of ``register_as``); the folder must stay in place until then."""
        from vigsp.tracking.models import MODEL_ARTIFACT_PATH

        tags = {k: str(v) for k, v in (version_tags or {}).items()}
        self._sender.submit(ModelOp(Path(folder).resolve(), MODEL_ARTIFACT_PATH, register_as, tags))

    def log_figure(self, figure: Any, name: str) -> None:
        """Renders a matplotlib figure to ``run_dir/figures/name`` (kept) and uploads it."""
        path = self.run_dir / "figures" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path)  # on the caller's thread: matplotlib is not thread-safe
        self.log_artifact(path, "figures")

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait (up to ``timeout_s``, and not at all while MLflow is down) until all is sent.

        Call it just before saving a checkpoint: a job killed afterwards then resumes from a
        step whose metrics are all in MLflow, so the resumed curve has no gap.
        """
        return self._sender.flush(timeout_s)

    # ---- ending ----------------------------------------------------------------------------------

    def finish(self, end: RunEnd = RunEnd.FINISHED) -> Unlogged | None:
        """Flush, set the final status (REQUEUED leaves it RUNNING), report what was not logged.

        Only the first call counts, so an exception after ``finish(REQUEUED)`` keeps RUNNING.
        """
        if self._finished:
            return self.unlogged
        self._finished = True
        atexit.unregister(self._flush_at_exit)
        if self._sampler is not None:
            self._sampler.stop()
        status = None if end is RunEnd.REQUEUED else RunEnd(end).value
        from vigsp.tracking.store import http_timeout_s

        self.unlogged = self._sender.close(status, self.flush_timeout_s, http_timeout_s())
        self._report(end)
        return self.unlogged

    def __enter__(self) -> Tracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        self.finish(end_for_exception(exc))
        return False

    # ---- internals -------------------------------------------------------------------------------

    def _flush_at_exit(self) -> None:
        # The engine never called finish: flush what we can, and leave the status alone.
        self.finish(RunEnd.REQUEUED)

    def _log_config_artifact(self, config: Mapping[str, Any]) -> None:
        # Params are truncated and stringified; the artifact keeps the config whole.
        path = self.run_dir / "mlflow_config.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=2, sort_keys=True, default=str) + "\n")
        self.log_artifact(path)

    def _start_system_metrics(self, interval_s: float) -> None:
        from vigsp.tracking.system import SystemSampler

        if not SystemSampler.available():
            log.info("system metrics off: psutil is not installed")
            return
        try:
            self._sampler = SystemSampler(lambda v: self.log_metrics(v, self.last_step), interval_s)
        except Exception as err:  # MLflow moved its monitor classes: lose system metrics only
            log.warning("system metrics off: %s", err)
            return
        self._sampler.start()

    def _report(self, end: RunEnd) -> None:
        assert self.unlogged is not None
        sender = self._sender
        record = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "run_id": sender.run_id,
            "tracking_uri": sender.spec.tracking_uri,
            "end": end.value,
            "resumed": sender.resumed,
            "outages": sender.outages,
            "skipped_on_resume": sender.skipped_on_resume,
            "complete": self.unlogged.total == 0,
            "unlogged": self.unlogged.to_json(),
        }
        try:
            with (self.run_dir / UNLOGGED_FILE).open("a") as out:
                out.write(json.dumps(record, sort_keys=True) + "\n")
        except OSError as err:
            log.warning("could not write %s: %s", self.run_dir / UNLOGGED_FILE, err)
        if self.unlogged.total:
            log.warning(
                "MLflow run %s: %s (details in %s)",
                sender.run_id,
                self.unlogged.summary(),
                self.run_dir / UNLOGGED_FILE,
            )
        else:
            log.info("MLflow run %s: everything was logged", sender.run_id)


def _provenance() -> dict[str, str]:
    from vigsp.tracking.provenance import provenance_tags

    return provenance_tags()


def _recorded_run_id(run_dir: Path, uri: str) -> str | None:
    """The run id an earlier job of this run directory logged to, if it used the same store."""
    path = run_dir / RUN_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable %s (%s): starting a new MLflow run", path, err)
        return None
    if data.get("tracking_uri") != uri:
        log.warning(
            "%s was logged to %s, not %s: starting a new MLflow run", run_dir, data.get("tracking_uri"), uri
        )
        return None
    return data.get("run_id")
