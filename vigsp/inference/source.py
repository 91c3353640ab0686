"""What ``vigsp eval`` and ``vigsp predict`` are pointed at, resolved to a config, the class list
and one set of weights: a run directory, a checkpoint tag, a weights file, an exported model
folder, or an MLflow model URI (``runs:/ID/...``, ``models:/NAME/VERSION``).

Weights are read with vigsp.inference.weights (never an arbitrary pickle); configs and class
lists come from YAML/JSON, or from a checkpoint's ``vigsp_state.pt`` read with weights_only.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from vigsp.config.schema import TrainConfig
from vigsp.errors import UserError
from vigsp.inference.exported import EXPORT_DIR, ExportedModel, is_exported, read_exported
from vigsp.inference.weights import load_torch_file, load_weights

log = logging.getLogger(__name__)

WeightsKind = Literal["final", "best", "latest", "ema"]
WEIGHTS_KINDS: tuple[str, ...] = ("final", "best", "latest", "ema")

RUN_CONFIG = "config.yaml"
LEGACY_FINAL = "final_model.pt"  # runs of vigsp before the exported model folder
DEEPSPEED_MODEL_FILE = "mp_rank_00_model_states.pt"
CHECKPOINT_META = "vigsp_state.pt"
MLFLOW_RUN_FILE = "mlflow_run.json"
_URI = re.compile(r"^[a-z][a-z0-9+.-]*:/")


@dataclass(frozen=True)
class MlflowRunRef:
    """The MLflow run a model came from (for logging its evaluation there)."""

    run_id: str
    tracking_uri: str | None
    experiment_id: str | None = None


@dataclass
class ModelSource:
    cfg: TrainConfig
    classes: tuple[str, ...]
    weights: dict[str, Tensor] = field(repr=False)
    kind: str  # final, best, latest, ema
    origin: str  # where the weights came from, for messages and MLflow tags
    run_dir: Path | None = None
    mlflow_run: MlflowRunRef | None = None
    step: int | None = None

    @property
    def dtype(self) -> torch.dtype:
        """The precision the run evaluated in: bf16 runs evaluate their weights in bf16; the EMA
        is kept in fp32 whatever the training precision (as in training)."""
        return torch.bfloat16 if self.cfg.deepspeed.bf16 and self.kind != "ema" else torch.float32

    def build_model(self, device: torch.device) -> nn.Module:
        from vigsp.config.model_inputs import model_arguments
        from vigsp.models import create_model

        model = create_model(self.cfg.model.name, **model_arguments(self.cfg))
        try:
            model.load_state_dict(self.weights, strict=True)
        except RuntimeError as err:
            first = str(err).splitlines()[:3]
            raise UserError(
                f"the weights from {self.origin} do not fit model {self.cfg.model.name!r} "
                f"as its config describes it: {' '.join(first)}"
            ) from None
        return model.to(device=device, dtype=self.dtype).eval()


def _mlflow_ref(run_dir: Path) -> MlflowRunRef | None:
    path = run_dir / MLFLOW_RUN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return MlflowRunRef(data["run_id"], data.get("tracking_uri"), data.get("experiment_id"))
    except (OSError, ValueError, KeyError, TypeError):
        log.warning("cannot read %s; the evaluation is not linked to an MLflow run", path)
        return None


def _checkpoint_config(tag_dir: Path) -> TrainConfig:
    from vigsp.config.loading import validate_tree

    meta = load_torch_file(tag_dir / CHECKPOINT_META)
    if not isinstance(meta, dict) or "config" not in meta:
        raise UserError(f"{tag_dir / CHECKPOINT_META} holds no run config")
    return validate_tree(meta["config"], str(tag_dir / CHECKPOINT_META))


def _verified_tag(tag_dir: Path) -> Path:
    from vigsp.train.manifest import verify

    problems = verify(tag_dir)
    if problems:
        raise UserError(
            f"the checkpoint {tag_dir} is damaged: {'; '.join(problems)}; choose another tag "
            "(ls checkpoints/) or the run's final weights"
        )
    return tag_dir


def _tag_weights(tag_dir: Path) -> dict[str, Tensor]:
    return load_weights(_verified_tag(tag_dir) / DEEPSPEED_MODEL_FILE, key="module")


def _run_tag(run_dir: Path, kind: str) -> Path:
    from vigsp.train.resume import read_latest

    ckpt_dir = run_dir / "checkpoints"
    if kind == "best":
        best = ckpt_dir / "best.json"
        if not best.is_file():
            raise UserError(
                f"{run_dir} has no best checkpoint ({best} is missing); use --weights final or latest"
            )
        return ckpt_dir / json.loads(best.read_text())["tag"]
    latest = read_latest(ckpt_dir)
    if latest is None:
        raise UserError(f"{run_dir} has no checkpoint yet ({ckpt_dir / 'latest'} is missing)")
    return ckpt_dir / latest


def _step_of(tag_dir: Path) -> int | None:
    match = re.fullmatch(r"step_(\d+)", tag_dir.name)
    return int(match.group(1)) if match else None


def _run_classes(run_dir: Path, cfg: TrainConfig) -> tuple[str, ...]:
    exported = run_dir / EXPORT_DIR
    if is_exported(exported):
        return read_exported(exported).classes
    from vigsp.data.folders import resolve_classes

    return resolve_classes(cfg.data)  # an unfinished run: its data config names the classes


def exported_source(
    model: ExportedModel,
    kind: str,
    origin: str,
    run_dir: Path | None = None,
    ref: MlflowRunRef | None = None,
) -> ModelSource:
    """An exported model has final and EMA weights; best and latest live in checkpoints only."""
    if kind in ("best", "latest"):
        raise UserError(
            f"{origin} is an exported model: it holds the final (and EMA) weights, not the {kind!r} "
            "checkpoint; use --weights final or ema, or point at the run directory"
        )
    weights = model.weights(kind)
    return ModelSource(model.cfg, model.classes, weights, kind, origin, run_dir, ref, model.info.get("step"))


def from_run_dir(run_dir: Path, kind: str) -> ModelSource:
    from vigsp.config.loading import load_config

    ref = _mlflow_ref(run_dir)
    exported = run_dir / EXPORT_DIR
    if kind in ("final", "ema") and is_exported(exported):
        model = read_exported(exported)
        return exported_source(model, kind, str(exported), run_dir, ref)
    cfg = load_config(run_dir / RUN_CONFIG)
    if kind in ("final", "ema"):
        legacy = run_dir / LEGACY_FINAL
        if not legacy.is_file():
            raise UserError(
                f"{run_dir} has no final weights ({exported} is missing: the run has not finished); "
                "use --weights latest or best"
            )
        if kind == "ema" and cfg.optim.ema_decay is None:
            raise UserError(f"{run_dir} kept no EMA (optim.ema_decay was null); use --weights final or best")
        weights = load_weights(legacy, key="model" if kind == "final" else "ema")
        return ModelSource(cfg, _run_classes(run_dir, cfg), weights, kind, str(legacy), run_dir, ref)
    tag_dir = _run_tag(run_dir, kind)
    return ModelSource(
        cfg,
        _run_classes(run_dir, cfg),
        _tag_weights(tag_dir),
        kind,
        str(tag_dir),
        run_dir,
        ref,
        _step_of(tag_dir),
    )


def from_tag_dir(tag_dir: Path) -> ModelSource:
    cfg = _checkpoint_config(tag_dir)
    run_dir = tag_dir.parent.parent if tag_dir.parent.name == "checkpoints" else None
    classes = _run_classes(run_dir, cfg) if run_dir is not None else _data_classes(cfg)
    ref = _mlflow_ref(run_dir) if run_dir is not None else None
    return ModelSource(
        cfg, classes, _tag_weights(tag_dir), "checkpoint", str(tag_dir), run_dir, ref, _step_of(tag_dir)
    )


def _data_classes(cfg: TrainConfig) -> tuple[str, ...]:
    from vigsp.data.folders import resolve_classes

    return resolve_classes(cfg.data)


def from_weights_file(path: Path, kind: str) -> ModelSource:
    """A weights file with its config beside it: in an exported model folder or a run directory."""
    from vigsp.config.loading import load_config

    folder = path.parent
    if is_exported(folder):
        model = read_exported(folder)
        return ModelSource(model.cfg, model.classes, load_weights(path), kind, str(path))
    if not (folder / RUN_CONFIG).is_file():
        raise UserError(
            f"{path} is a weights file without a run config beside it; point vigsp at the run directory "
            "or the exported model folder that holds it"
        )
    cfg = load_config(folder / RUN_CONFIG)
    key = "model" if path.name == LEGACY_FINAL else None
    return ModelSource(
        cfg, _run_classes(folder, cfg), load_weights(path, key), kind, str(path), folder, _mlflow_ref(folder)
    )


def from_mlflow_uri(uri: str, kind: str) -> ModelSource:
    from vigsp.inference.mlflow_models import download_exported

    root, ref = download_exported(uri)
    model = read_exported(root)
    return exported_source(model, kind, uri, None, ref)


def resolve_model(spec: str, kind: str = "final") -> ModelSource:
    """The model ``spec`` names (see the module docstring), with the weights ``kind`` asks for."""
    if kind not in WEIGHTS_KINDS:
        raise UserError(f"--weights {kind!r}: choose one of {', '.join(WEIGHTS_KINDS)}")
    if _URI.match(spec) and not spec.startswith("file:"):
        return from_mlflow_uri(spec, kind)
    path = Path(spec.removeprefix("file://")).expanduser()
    if not path.exists():
        raise UserError(f"{path} does not exist; give a run directory, a checkpoint, or an MLflow model URI")
    if path.is_file():
        return from_weights_file(path, kind)
    if is_exported(path):
        model = read_exported(path)
        return exported_source(model, kind, str(path))
    if (path / DEEPSPEED_MODEL_FILE).is_file():
        return from_tag_dir(path)
    if (path / RUN_CONFIG).is_file():
        return from_run_dir(path, kind)
    raise UserError(
        f"{path} is neither a run directory (no {RUN_CONFIG}), a checkpoint (no {DEEPSPEED_MODEL_FILE}) "
        f"nor an exported model (no model.json)"
    )
