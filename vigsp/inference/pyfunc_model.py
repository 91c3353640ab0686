"""The trained model as an MLflow ``pyfunc`` model: images in, class probabilities out, served
without DALI, DeepSpeed or a GPU (the preprocessing and superpixel graph of ``vigsp predict``,
through ``vigsp._native``).

The MLflow model folder holds no pickle: the model is "models from code" (pyfunc_entry.py, a
readable Python file), the weights are the exported model's safetensors (under
``artifacts/vigsp_model``), config and classes are YAML/JSON, and the vigsp package travels in
``code/`` with its compiled core (built for the Python and platform that trained the model).

Input: a DataFrame with a column ``image`` of encoded image bytes (JPEG, PNG, ...; base64 in JSON
requests) or HxW / HxWx3 uint8 arrays. Output, one row per image: ``class`` (the top-1 name),
``probability`` (its probability), ``probabilities`` (all classes, in the order of the model's
``classes`` metadata) and ``error`` (empty, or why the row's image could not be read: the other
rows are still predicted).
"""

from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

ARTIFACT_KEY = "vigsp_model"  # the exported model folder, under the MLflow model's artifacts/
ENTRY_FILE = Path(__file__).with_name("pyfunc_entry.py")
INPUT_COLUMN = "image"
# What loading and predicting imports besides the standard library (tests/test_mlflow_model.py
# checks the list against a fresh process's sys.modules).
REQUIREMENTS = ("mlflow", "numpy", "pandas", "pillow", "pydantic", "pyyaml", "safetensors", "torch")


class VigspModel(mlflow.pyfunc.PythonModel):
    """The pyfunc face of vigsp.inference.predictor.Predictor."""

    def load_context(self, context: Any) -> None:
        from vigsp.inference.exported import read_exported
        from vigsp.inference.predictor import Predictor
        from vigsp.inference.source import exported_source

        config = context.model_config or {}
        root = Path(context.artifacts[ARTIFACT_KEY])
        source = exported_source(read_exported(root), config.get("weights", "final"), str(root))
        self.predictor = Predictor(source, batch_size=int(config.get("batch_size", 64)))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from vigsp.inference.preprocess import UnreadableImageError, decode

        images, rows, errors = [], [], [""] * len(model_input)
        for row, value in enumerate(_column(model_input)):
            try:
                images.append(decode(_image_value(value), f"row {row}"))
                rows.append(row)
            except UnreadableImageError as err:
                errors[row] = str(err)
        probs = self.predictor.probabilities(images, [f"row {r}" for r in rows])
        classes = self.predictor.classes
        out = pd.DataFrame(
            {
                "class": [None] * len(errors),
                "probability": [None] * len(errors),  # null in JSON, not NaN
                "probabilities": [[] for _ in errors],
                "error": errors,
            },
            dtype=object,
        )
        for row, p in zip(rows, probs, strict=True):
            best = int(np.argmax(p))
            out.at[row, "class"] = classes[best]
            out.at[row, "probability"] = float(p[best])
            out.at[row, "probabilities"] = [float(v) for v in p]
        return out


def _column(model_input: Any) -> list:
    if isinstance(model_input, pd.DataFrame):
        if INPUT_COLUMN not in model_input:
            raise ValueError(
                f"the input has no {INPUT_COLUMN!r} column (it has {', '.join(map(str, model_input))}): "
                "give one image per row as encoded bytes or a uint8 array"
            )
        return list(model_input[INPUT_COLUMN])
    if isinstance(model_input, (list, tuple)):
        return list(model_input)
    got = type(model_input).__name__
    raise ValueError(f"expected a DataFrame with an {INPUT_COLUMN!r} column, got {got}")


def _image_value(value: Any) -> bytes | np.ndarray:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (np.ndarray, list)):
        return np.asarray(value)  # decode() insists on uint8 and names the row otherwise
    from vigsp.inference.preprocess import UnreadableImageError

    raise UnreadableImageError(f"expected image bytes or a uint8 array, got {type(value).__name__}")


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs = Schema([ColSpec(DataType.binary, INPUT_COLUMN)])
    outputs = Schema(
        [
            ColSpec(DataType.string, "class", required=False),
            ColSpec(DataType.double, "probability", required=False),
            ColSpec(Array(DataType.double), "probabilities", required=False),
            ColSpec(DataType.string, "error"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def pinned_requirements() -> list[str]:
    """The installed versions (without a local build tag such as +cpu, which pip indexes lack)."""
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in REQUIREMENTS]


def stage_package(into: Path) -> Path:
    """A copy of the vigsp package with its compiled core, for the model's ``code/``. An editable
    install keeps ``_native`` outside the source tree, so it is copied in explicitly."""
    import vigsp
    from vigsp import _native

    package = Path(vigsp.__file__).parent
    target = into / "vigsp"
    shutil.copytree(package, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    native = Path(_native.__file__)
    if not (target / native.name).exists():
        shutil.copy2(native, target / native.name)
    return target


def save_pyfunc(
    exported: Path,
    out: Path,
    example: bytes | None = None,
    weights: str = "final",
    batch_size: int = 64,
    **info: Any,
) -> Path:
    """The MLflow model folder ``out`` for the exported model in ``exported``; ``example`` (one
    real image's bytes) becomes the input example; ``info`` goes into the model's metadata."""
    from vigsp._version import __version__
    from vigsp.inference.exported import read_exported

    model = read_exported(exported)
    if out.exists():
        shutil.rmtree(out)
    staging = out.with_name(f".{out.name}.code")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        mlflow.pyfunc.save_model(
            path=str(out),
            python_model=str(ENTRY_FILE),
            artifacts={ARTIFACT_KEY: str(exported)},
            code_paths=[str(stage_package(staging))],
            signature=signature(),
            input_example=pd.DataFrame({INPUT_COLUMN: [example]}) if example is not None else None,
            pip_requirements=pinned_requirements(),
            model_config={"weights": weights, "batch_size": batch_size},
            metadata={
                "vigsp_version": __version__,
                "model": model.cfg.model.name,
                "classes": list(model.classes),
                "weights": weights,
                **{k: v for k, v in info.items() if v is not None},
            },
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
