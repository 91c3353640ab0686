"""Per-image predictions over one split, on any number of ranks, and what they add up to.

Each rank runs its shard of the evaluation loader (every image exactly once across ranks, as in
training's evaluation), keeps its images' top-k classes and probabilities, and rank 0 gathers
them. Top-1/top-5 count a hit the way training's ``topk_correct`` does (the label among the k
highest logits), so an evaluation of the weights training evaluated gives the same figures.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vigsp.data.loader import Batch
from vigsp.train.distributed import DistEnv, all_gather_object


@dataclass(frozen=True)
class Predictions:
    """One row per image, ordered by ``index`` (its position in the split's ImageIndex)."""

    index: np.ndarray  # [N] int64
    labels: np.ndarray  # [N] int64
    topk: np.ndarray  # [N, k] int64 class ids, highest logit first
    topk_prob: np.ndarray  # [N, k] float32 softmax probabilities of those classes
    loss_sum: float  # cross-entropy summed over the images (float64)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @staticmethod
    def concatenate(parts: Iterable[Predictions]) -> Predictions:
        parts = list(parts)
        index = np.concatenate([p.index for p in parts])
        order = np.argsort(index, kind="stable")
        return Predictions(
            index[order],
            np.concatenate([p.labels for p in parts])[order],
            np.concatenate([p.topk for p in parts])[order],
            np.concatenate([p.topk_prob for p in parts])[order],
            float(sum(p.loss_sum for p in parts)),
        )


@torch.no_grad()
def predict_batches(
    model: nn.Module,
    batches: Iterable[Batch],
    input_names: tuple[str, ...],
    device: torch.device,
    dtype: torch.dtype,
    num_classes: int,
    k: int = 5,
) -> Predictions:
    """This rank's predictions for ``batches``, the ``k`` best classes of each image."""
    index, labels, top, prob, loss_sum = [], [], [], [], 0.0
    for batch in batches:
        logits = model(**batch.model_inputs(input_names, device, dtype)).float()
        target = batch.labels.to(device)
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum").double())
        best = logits.topk(min(k, logits.shape[1]), dim=1).indices
        index.append(batch.index.numpy())
        labels.append(batch.labels.numpy())
        top.append(best.cpu().numpy())
        prob.append(logits.softmax(dim=1).gather(1, best).cpu().numpy())
    width = min(k, num_classes)
    return Predictions(
        np.concatenate(index) if index else np.zeros(0, np.int64),
        np.concatenate(labels) if labels else np.zeros(0, np.int64),
        np.concatenate(top) if top else np.zeros((0, width), np.int64),
        np.concatenate(prob) if prob else np.zeros((0, width), np.float32),
        loss_sum,
    )


def gather_predictions(local: Predictions, env: DistEnv) -> Predictions | None:
    """Every rank's predictions, on rank 0 (None elsewhere)."""
    parts = all_gather_object(local, env)
    return Predictions.concatenate(parts) if env.is_main else None


@dataclass(frozen=True)
class ClassRow:
    name: str
    images: int
    correct: int
    confused_with: str | None  # the class its images are most often mistaken for
    confused_count: int

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / self.images if self.images else float("nan")


@dataclass(frozen=True)
class EvalSummary:
    images: int
    top1: float
    top5: float
    loss: float
    confusion: np.ndarray  # [C, C] int64: row = true class, column = predicted
    classes: tuple[str, ...]

    def per_class(self) -> list[ClassRow]:
        rows = []
        for c, name in enumerate(self.classes):
            counts = self.confusion[c].copy()
            correct = int(counts[c])
            counts[c] = -1
            other = int(counts.argmax()) if len(counts) > 1 else c
            confused = int(counts[other]) if other != c else 0
            rows.append(
                ClassRow(
                    name,
                    int(self.confusion[c].sum()),
                    correct,
                    self.classes[other] if confused > 0 else None,
                    confused,
                )
            )
        return rows


def summarize(predictions: Predictions, classes: tuple[str, ...]) -> EvalSummary:
    n = len(predictions)
    hits = predictions.topk == predictions.labels[:, None]
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (predictions.labels, predictions.topk[:, 0]), 1)
    # The same float64 arithmetic as training's evaluate(), so equal counts print equal figures.
    return EvalSummary(
        images=n,
        top1=100.0 * float(hits[:, :1].any(axis=1).sum()) / max(n, 1),
        top5=100.0 * float(hits[:, :5].any(axis=1).sum()) / max(n, 1),
        loss=predictions.loss_sum / max(n, 1),
        confusion=confusion,
        classes=classes,
    )
