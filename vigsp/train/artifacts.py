"""What rank 0 writes and uploads besides metrics: a superpixel overlay at the start (from the
first validation batch); the exported model, the curves and the per-epoch CSV at the end.
Failures here lose a picture, never the run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from vigsp.config.schema import TrainConfig
from vigsp.train.records import CsvRecord

log = logging.getLogger(__name__)

MLFLOW_MODEL_DIR = "mlflow_model"  # the exported model as an MLflow pyfunc model, in the run dir
OVERLAY_FILE = "superpixels.png"
OVERLAY_DATA_FILE = "superpixels.npz"
CURVES_FILE = "curves.png"


def first_batch_graphs(
    cfg: TrainConfig, val_loader: Any, count: int = 8
) -> tuple[list, list[str], list, Any, Any]:
    """The first ``count`` images of the first validation batch, as the model sees them: uint8
    images (the normalisation undone), their graphs from the batch's own label maps, file names,
    and the batch's label maps ``[n, S, S]``."""
    from vigsp import superpixels

    batch = next(iter(val_loader))
    n = min(count, len(batch))
    mean, std = np.asarray(cfg.data.mean), np.asarray(cfg.data.std)
    pixels = batch.images[:n].float().cpu().numpy().transpose(0, 2, 3, 1) * (255 * std) + 255 * mean
    images = list(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    label_maps = batch.label_maps[:n].cpu().numpy()
    graphs = [superpixels.graph_from_labels(im, lab) for im, lab in zip(images, label_maps, strict=True)]
    names = [Path(val_loader.index.path(int(i))).name for i in batch.index[:n]]
    return images, names, graphs, label_maps, batch.index[:n].cpu().numpy()


def log_superpixel_overlay(tracker: Any, cfg: TrainConfig, val_loader: Any, run_dir: Path) -> None:
    """What the model sees: the first validation images with their superpixels, RAG and centroids,
    drawn from the label maps of the first real validation batch. The label maps and image
    indices go beside the PNG (``superpixels.npz``), so the picture can be checked against data."""
    if cfg.data.superpixel is None:
        return
    try:
        from vigsp.viz import render

        images, names, graphs, label_maps, index = first_batch_graphs(cfg, val_loader)
        out = run_dir / "figures" / OVERLAY_FILE
        render(images, names, graphs, out)
        np.savez_compressed(out.with_name(OVERLAY_DATA_FILE), label_maps=label_maps, index=index)
        tracker.log_artifact(out, "figures")
        tracker.log_artifact(out.with_name(OVERLAY_DATA_FILE), "figures")
    except Exception as err:  # a picture is not worth a failed run
        log.warning("no superpixel overlay for MLflow: %s", err)


def plot_curves(epochs: CsvRecord, out: Path) -> Path | None:
    rows = epochs.read()
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [int(r["epoch"]) for r in rows]
    figure, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        ys = [float(r[key]) if r[key] else float("nan") for r in rows]
        loss_ax.plot(x, ys, marker="o", label=label)
    for key, label in (("val_top1", "top-1"), ("val_top5", "top-5"), ("val_top1_ema", "top-1 EMA")):
        ys = [float(r[key]) if r[key] else float("nan") for r in rows]
        if any(y == y for y in ys):
            acc_ax.plot(x, ys, marker="o", label=label)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="%", title="validation accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def export_final(
    run_dir: Path, cfg: TrainConfig, module: nn.Module, ema: Any, classes: tuple[str, ...], state: Any
) -> Path | None:
    """Rank 0: the exported model (``run_dir/model/``: safetensors weights, config, classes), what
    `vigsp eval`/`predict` and the MLflow model read. A failure costs the export, not the run:
    the checkpoints still hold the weights."""
    from vigsp.inference.exported import EXPORT_DIR, write_exported

    try:
        return write_exported(
            run_dir / EXPORT_DIR,
            cfg,
            classes,
            module.state_dict(),
            ema.state_dict() if ema is not None else None,
            step=state.global_step,
            epoch=state.epoch,
            val_top1=state.val_top1,
            val_top5=state.val_top5,
        )
    except Exception as err:
        log.warning("no exported model in %s: %s", run_dir / EXPORT_DIR, err)
        return None


def save_mlflow_model(cfg: TrainConfig, exported: Path, example: Path | None, state: Any) -> Path | None:
    """Rank 0: the exported model as an MLflow pyfunc model in ``RUN_DIR/mlflow_model`` (servable
    with ``mlflow models serve -m``), ``example`` (a validation image) as its input example. A
    failure costs the MLflow model, not the run: ``model/`` still holds everything."""
    if not cfg.tracking.log_model:
        return None
    try:
        from vigsp.inference.pyfunc_model import save_pyfunc

        out = exported.parent / MLFLOW_MODEL_DIR
        image = example.read_bytes() if example is not None else None
        return save_pyfunc(exported, out, image, step=state.global_step, val_top1=state.val_top1)
    except Exception as err:
        log.warning("no MLflow model for %s: %s", exported, err)
        return None


def version_tags(cfg: TrainConfig, state: Any) -> dict[str, str]:
    """What a registered version says about the run that made it."""
    values = {
        "val_top1": state.val_top1,
        "val_top5": state.val_top5,
        "step": state.global_step,
        "epoch": state.epoch,
        "model": cfg.model.name,
        "run_name": cfg.run.name,
    }
    return {k: str(v) for k, v in values.items() if v is not None}


def log_final(
    tracker: Any, epochs: CsvRecord, run_dir: Path, model: Path | None, cfg: TrainConfig, state: Any
) -> None:
    if not tracker.enabled:
        return
    try:
        curves = plot_curves(epochs, run_dir / "figures" / CURVES_FILE)
        if curves is not None:
            tracker.log_artifact(curves, "figures")
        if epochs.path.is_file():
            tracker.log_artifact(epochs.path)
        if model is not None:
            tracker.log_model(model, cfg.tracking.register_model, version_tags(cfg, state))
    except Exception as err:
        log.warning("final artifacts not logged: %s", err)
