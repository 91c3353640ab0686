"""An MLflow model folder uploaded to a run and, when asked, registered as a new version.

Plain client calls with an explicit run id (no fluent "active run"), so the sender's thread and
``vigsp eval`` can log to a run they did not start. Safe to repeat after a transient failure:
the upload overwrites the same files, and a model already registered from the same run and
artifact path gets no second version.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger("vigsp.tracking")

MODEL_ARTIFACT_PATH = "model"  # runs:/ID/model


def log_model_folder(
    client: MlflowClient,
    run_id: str,
    folder: Path,
    artifact_path: str = MODEL_ARTIFACT_PATH,
    register_as: str | None = None,
    version_tags: dict[str, str] | None = None,
) -> ModelVersion | None:
    """Upload ``folder`` (a saved MLflow model) as ``runs:/RUN_ID/ARTIFACT_PATH``; register it as
    a new version of ``register_as`` (created if needed), tagged with ``version_tags``."""
    client.log_artifacts(run_id, str(folder), artifact_path)
    log.info("MLflow model logged: runs:/%s/%s", run_id, artifact_path)
    if register_as is None:
        return None
    return register_version(client, run_id, artifact_path, register_as, version_tags or {})


def register_version(
    client: MlflowClient, run_id: str, artifact_path: str, name: str, tags: dict[str, str]
) -> ModelVersion:
    from mlflow.exceptions import MlflowException

    source = f"runs:/{run_id}/{artifact_path}"
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    existing = [v for v in found if v.source == source]
    if existing:  # a retry after the version was created but its answer was lost
        return existing[0]
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    # The client waits (up to 5 minutes) until the new version is READY.
    version = client.create_model_version(name, source, run_id=run_id, tags=tags)
    log.info("registered as models:/%s/%s", name, version.version)
    return version
