"""Exported vigsp models stored in MLflow: found behind a model URI and downloaded."""

from __future__ import annotations

import tempfile
from pathlib import Path

from vigsp.errors import UserError
from vigsp.inference.exported import INFO_FILE


def _find_exported(root: Path) -> Path | None:
    candidates = sorted(p.parent for p in root.rglob(INFO_FILE))
    return candidates[0] if candidates else None


def _run_ref(uri: str):  # -> MlflowRunRef | None
    from mlflow.tracking import MlflowClient

    from vigsp.inference.source import MlflowRunRef

    if uri.startswith("runs:/"):
        return MlflowRunRef(uri.removeprefix("runs:/").split("/", 1)[0], None)
    if uri.startswith("models:/"):
        name, _, version = uri.removeprefix("models:/").partition("/")
        try:
            found = MlflowClient().get_model_version(name, version)
        except Exception:  # an alias or stage, not a number: the run stays unknown
            return None
        return MlflowRunRef(found.run_id, None) if found.run_id else None
    return None


def download_exported(uri: str):  # -> tuple[Path, MlflowRunRef | None]
    """A local copy of the exported model behind ``uri`` and the run that logged it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    target = Path(tempfile.mkdtemp(prefix="vigsp-model-"))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(target)))
    except MlflowException as err:
        raise UserError(
            f"cannot download {uri} from MLflow ({mlflow.get_tracking_uri()}): {err.message}"
        ) from None
    except OSError as err:
        raise UserError(f"cannot download {uri} from MLflow ({mlflow.get_tracking_uri()}): {err}") from None
    root = _find_exported(local if local.is_dir() else local.parent)
    if root is None:
        raise UserError(f"{uri} holds no exported vigsp model (no {INFO_FILE} in it)")
    return root, _run_ref(uri)
