"""An evaluation in MLflow: metrics ``eval/<dataset>/top1`` (top5, loss, images), the report files
under the artifact path ``eval/<dataset>/``, and the evaluated images as an MLflow dataset input
(name, content digest, where they are) with context ``eval``. By default into the training's own
run; with ``new_run`` into a new run of the same experiment, tagged with the run it evaluates."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import xxhash

from vigsp.data.folders import ImageIndex
from vigsp.errors import UserError
from vigsp.inference.evaluation import EvalSummary
from vigsp.inference.source import MlflowRunRef, ModelSource

TAG_EVALUATES = "vigsp.evaluates_run"
TAG_EVAL_WEIGHTS = "vigsp.eval.weights"


@dataclass(frozen=True)
class DatasetInfo:
    """The evaluated images: a name (for metric keys) and a digest of their content and labels."""

    name: str
    digest: str
    root: Path
    images: int
    classes: int

    @staticmethod
    def of(index: ImageIndex, name: str) -> DatasetInfo:
        digest = xxhash.xxh3_64()
        for i, relative in enumerate(index.files):
            digest.update(f"{relative}\t{int(index.labels[i])}\n".encode())
            digest.update(index.path(i).read_bytes())
        return DatasetInfo(name, digest.hexdigest(), index.root, len(index), len(index.classes))


def _metric_key(dataset: str, name: str) -> str:
    return f"eval/{dataset}/{name}"


def log_evaluation(
    ref: MlflowRunRef,
    tracking_uri: str,
    summary: EvalSummary,
    dataset: DatasetInfo,
    files: Sequence[Path],
    weights: str,
    new_run: bool = False,
) -> str:
    """Logs the evaluation; returns the id of the run it went to. Errors are UserErrors that say
    what was not logged (the report files are on disk already)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric
    from mlflow.exceptions import MlflowException

    from vigsp.tracking.store import INTERACTIVE_HTTP_ENV, apply_http_defaults, open_client

    apply_http_defaults(INTERACTIVE_HTTP_ENV)
    try:
        client = open_client(tracking_uri)
        evaluated = client.get_run(ref.run_id)
        run_id = ref.run_id
        if new_run:
            run = client.create_run(
                evaluated.info.experiment_id,
                run_name=f"eval {dataset.name} of {evaluated.info.run_name}",
                tags={TAG_EVALUATES: ref.run_id, TAG_EVAL_WEIGHTS: weights},
            )
            run_id = run.info.run_id
        now = int(time.time() * 1000)
        values = {"top1": summary.top1, "top5": summary.top5, "loss": summary.loss, "images": summary.images}
        metrics = [Metric(_metric_key(dataset.name, k), float(v), now, 0) for k, v in values.items()]
        client.log_batch(run_id, metrics=metrics, tags=[])
        client.set_tag(run_id, f"{TAG_EVAL_WEIGHTS}.{dataset.name}", weights)
        source = json.dumps({"uri": dataset.root.resolve().as_uri()})
        profile = json.dumps({"images": dataset.images, "classes": dataset.classes})
        data = Dataset(dataset.name, dataset.digest, "local", source, profile=profile)
        client.log_inputs(run_id, datasets=[DatasetInput(data, [InputTag("mlflow.data.context", "eval")])])
        for path in files:
            client.log_artifact(run_id, str(path), f"eval/{dataset.name}")
        if new_run:
            client.set_terminated(run_id)
    except MlflowException as err:
        raise UserError(
            f"the evaluation was not logged to MLflow run {ref.run_id} at {tracking_uri}: {err.message}"
        ) from None
    except OSError as err:
        raise UserError(f"the evaluation was not logged to MLflow at {tracking_uri}: {err}") from None
    return run_id


def log_evaluated_model(
    source: ModelSource,
    tracking_uri: str,
    run_id: str,
    index: ImageIndex,
    summary: EvalSummary,
    dataset: DatasetInfo,
    register_as: str | None,
    into_training_run: bool,
) -> str:
    """The evaluated weights as an MLflow pyfunc model in run ``run_id`` (``model`` in a new run,
    ``model_<weights>`` beside the training's own ``model``), registered as a new version of
    ``register_as`` tagged with this evaluation. Returns the model's URI."""
    import tempfile

    from mlflow.exceptions import MlflowException

    from vigsp.inference.exported import write_exported
    from vigsp.inference.pyfunc_model import save_pyfunc
    from vigsp.tracking.models import MODEL_ARTIFACT_PATH, log_model_folder
    from vigsp.tracking.store import open_client

    kind = "ema" if source.kind == "ema" else "final"  # the precision of the weights goes with them
    stored = {
        "weights": source.weights if kind == "final" else None,
        "ema": source.weights if kind == "ema" else None,
    }
    artifact_path = f"{MODEL_ARTIFACT_PATH}_{source.kind}" if into_training_run else MODEL_ARTIFACT_PATH
    tags = {
        f"eval/{dataset.name}/top1": str(summary.top1),
        f"eval/{dataset.name}/top5": str(summary.top5),
        "dataset_digest": dataset.digest,
        "weights": source.kind,
        "step": str(source.step) if source.step is not None else "",
    }
    with tempfile.TemporaryDirectory(prefix="vigsp-model-") as tmp:
        exported = write_exported(
            Path(tmp) / "model", source.cfg, source.classes, **stored, step=source.step, origin=source.origin
        )
        example = index.path(0).read_bytes() if len(index) else None
        folder = save_pyfunc(exported, Path(tmp) / "mlflow_model", example, weights=kind, step=source.step)
        try:
            version = log_model_folder(
                open_client(tracking_uri), run_id, folder, artifact_path, register_as, tags
            )
        except MlflowException as err:
            raise UserError(
                f"the model was not logged to MLflow run {run_id} at {tracking_uri}: {err.message}"
            ) from None
    if version is not None:
        return f"models:/{version.name}/{version.version}"
    return f"runs:/{run_id}/{artifact_path}"
