"""An evaluation on disk and on the terminal: metrics.json, per_class.csv, confusion.csv and .png,
predictions.csv (one row per image), and the per-class table."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from vigsp.data.folders import ImageIndex
from vigsp.inference.evaluation import EvalSummary, Predictions

METRICS_FILE = "metrics.json"
PER_CLASS_FILE = "per_class.csv"
CONFUSION_CSV = "confusion.csv"
CONFUSION_PNG = "confusion.png"
PREDICTIONS_FILE = "predictions.csv"
TABLE_ROWS = 30  # more classes than this: the table shows the worst ones, the CSV has all


def write_report(
    out: Path, summary: EvalSummary, predictions: Predictions, index: ImageIndex, info: dict[str, Any]
) -> list[Path]:
    """Every file of the evaluation in ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = {
        "top1": summary.top1,
        "top5": summary.top5,
        "loss": summary.loss,
        "images": summary.images,
        **info,
    }
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    with open(out / PER_CLASS_FILE, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "images", "correct", "top1", "most_confused_with", "confused_count"])
        for row in summary.per_class():
            writer.writerow(
                [
                    row.name,
                    row.images,
                    row.correct,
                    f"{row.accuracy:.4f}",
                    row.confused_with or "",
                    row.confused_count,
                ]
            )
    with open(out / CONFUSION_CSV, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["true \\ predicted", *summary.classes])
        for name, counts in zip(summary.classes, summary.confusion, strict=True):
            writer.writerow([name, *counts.tolist()])
    _write_predictions(out / PREDICTIONS_FILE, predictions, index)
    files = [out / METRICS_FILE, out / PER_CLASS_FILE, out / CONFUSION_CSV, out / PREDICTIONS_FILE]
    png = plot_confusion(summary, out / CONFUSION_PNG)
    return [*files, png] if png is not None else files


def _write_predictions(path: Path, predictions: Predictions, index: ImageIndex) -> None:
    classes = index.classes
    k = predictions.topk.shape[1]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "predicted", "probability", *[f"top{i + 1}" for i in range(1, k)]])
        for i, label, top, prob in zip(
            predictions.index, predictions.labels, predictions.topk, predictions.topk_prob, strict=True
        ):
            rest = [f"{classes[c]}:{p:.6f}" for c, p in zip(top[1:], prob[1:], strict=True)]
            writer.writerow(
                [index.files[int(i)], classes[int(label)], classes[int(top[0])], f"{prob[0]:.6f}", *rest]
            )


def plot_confusion(summary: EvalSummary, out: Path) -> Path | None:
    """Rows normalised to the class's images (the diagonal is the per-class accuracy); counts are
    written in the cells when there are few classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(summary.classes)
    counts = summary.confusion.astype(np.float64)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(4 + 0.45 * n, 30)
    figure, ax = plt.subplots(figsize=(side + 1.5, side))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if n <= 40:
        ax.set_xticks(range(n), summary.classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), summary.classes, fontsize=8)
    if n <= 20:
        for (r, c), value in np.ndenumerate(summary.confusion):
            if value:
                ax.text(
                    c,
                    r,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if rates[r, c] > 0.5 else "black",
                )
    ax.set(
        xlabel="predicted",
        ylabel="true",
        title=f"confusion: top-1 {summary.top1:.2f}% of {summary.images} images",
    )
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    figure.tight_layout()
    figure.savefig(out, dpi=100)
    plt.close(figure)
    return out


def print_summary(summary: EvalSummary, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = summary.per_class()
    shown = rows if len(rows) <= TABLE_ROWS else sorted(rows, key=lambda r: r.accuracy)[:TABLE_ROWS]
    table = Table(title=title if len(rows) <= TABLE_ROWS else f"{title} (the {TABLE_ROWS} worst classes)")
    for column in ("class", "images", "top-1", "most confused with"):
        table.add_column(column, justify="left" if column in ("class", "most confused with") else "right")
    for row in shown:
        confused = f"{row.confused_with} ({row.confused_count})" if row.confused_with else "-"
        table.add_row(row.name, str(row.images), f"{row.accuracy:.2f}%", confused)
    console = Console()
    console.print(table)
    console.print(
        f"top-1 {summary.top1:.2f}%  top-5 {summary.top5:.2f}%  loss {summary.loss:.4f}  "
        f"over {summary.images} images"
    )
