"""One MLflow run as the sender's worker sees it: open or resume it, and send batches of ops.

Everything here is a plain blocking call that may raise; the worker (``sender``) decides what
to retry. Each call is safe to repeat after a transient failure: opening remembers which steps
are done, and a batch's resume bookkeeping is updated only after MLflow accepted it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vigsp.tracking.names import RUN_FILE, TAG_CHANGED_PARAMS, TAG_RESUME_COUNT, TAG_RUN_NAME
from vigsp.tracking.ops import ArtifactOp, EndOp, MetricsOp, ModelOp, Op, ParamsOp, TagsOp
from vigsp.tracking.store import get_or_create_experiment, is_transient, open_client

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Run

log = logging.getLogger("vigsp.tracking")


@dataclass(frozen=True)
class RunSpec:
    """Which run to open: resume ``run_id`` when given and still there, else create one."""

    tracking_uri: str
    experiment: str
    run_dir: Path
    run_name: str | None = None
    run_id: str | None = None


def write_run_file(run_dir: Path, data: dict[str, Any]) -> None:
    """Atomically, so a kill mid-write never leaves a half file for the resume to trip on."""
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".{RUN_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, run_dir / RUN_FILE)


class MlflowRun:
    """The client and the run, plus what a resumed run already holds (to log nothing twice)."""

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.resumed = False
        self.skipped_on_resume = 0  # metric values at steps the previous process already logged
        self._client: MlflowClient | None = None
        self._last_steps: dict[str, int] = {}  # per metric, the last step the run holds
        self._existing_params: dict[str, str] = {}
        self._resume_count = 0
        self._marked_running = False

    def open(self) -> None:
        """Create or resume the run. Safe to retry: each step remembers that it is done."""
        spec = self.spec
        if self._client is None:
            self._client = open_client(spec.tracking_uri)
        if self.run_id is None:
            self._find_or_create(self._client)
        assert self.run_id is not None
        if self.resumed and not self._marked_running:
            self._client.update_run(self.run_id, status="RUNNING")
            self._client.set_tag(self.run_id, TAG_RESUME_COUNT, str(self._resume_count))
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

    def send(self, batch: list[Op]) -> None:
        """One call: a single artifact, model or status op, or ops that fit one ``log_batch``."""
        assert self._client is not None and self.run_id is not None
        first = batch[0]
        if isinstance(first, ArtifactOp):
            if first.path.is_dir():
                self._client.log_artifacts(self.run_id, str(first.path), first.artifact_path)
            else:
                self._client.log_artifact(self.run_id, str(first.path), first.artifact_path)
        elif isinstance(first, ModelOp):
            from vigsp.tracking.models import log_model_folder

            op = first
            log_model_folder(
                self._client, self.run_id, op.folder, op.artifact_path, op.register_as, op.version_tags
            )
        elif isinstance(first, EndOp):
            self._client.set_terminated(self.run_id, first.status)
        else:
            self._log_batch(batch)

    def _find_or_create(self, client: MlflowClient) -> None:
        spec = self.spec
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

    def _log_batch(self, ops: list[Op]) -> None:
        from mlflow.entities import Param, RunTag

        assert self._client is not None and self.run_id is not None
        params: dict[str, str] = {}
        tags: dict[str, str] = {}
        for op in ops:
            if isinstance(op, ParamsOp):
                params.update(op.params)
            elif isinstance(op, TagsOp):
                tags.update(op.tags)
        metrics, skipped = self._new_metrics(ops)
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

    def _new_metrics(self, ops: list[Op]) -> tuple[list[Metric], int]:
        """The metric values to log, and how many were skipped: on resume, the previous
        process already logged each metric up to its last step."""
        from mlflow.entities import Metric

        metrics: list[Metric] = []
        skipped = 0
        for op in ops:
            if not isinstance(op, MetricsOp):
                continue
            for key, value in op.values.items():
                if op.step <= self._last_steps.get(key, -1):
                    skipped += 1
                else:
                    metrics.append(Metric(key, value, op.timestamp_ms, op.step))
        return metrics, skipped

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
