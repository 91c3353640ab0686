"""Class probabilities for images, without DALI: the code behind ``vigsp predict`` and the MLflow
model's ``predict``, so both give the same numbers for the same images."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vigsp.inference.preprocess import ImageSource, Preprocessing, UnreadableImageError, decode
from vigsp.inference.source import ModelSource


@dataclass(frozen=True)
class Prediction:
    name: str
    probabilities: np.ndarray  # [C] float32

    def top(self, classes: Sequence[str], k: int) -> list[tuple[str, float]]:
        best = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(classes[int(c)], float(self.probabilities[c])) for c in best]


@dataclass(frozen=True)
class Failure:
    name: str
    reason: str


class Predictor:
    """A model on the CPU (or ``device``) with its run's evaluation preprocessing."""

    def __init__(self, source: ModelSource, device: torch.device | None = None, batch_size: int = 64) -> None:
        from vigsp.config.model_inputs import declared_inputs

        self.source = source
        self.classes = source.classes
        self.device = device or torch.device("cpu")
        self.model = source.build_model(self.device)
        self.input_names = declared_inputs(source.cfg).names
        self.preprocessing = Preprocessing(source.cfg.data)
        self.batch_size = batch_size

    @torch.no_grad()
    def probabilities(self, images: Sequence[np.ndarray], names: Sequence[str]) -> np.ndarray:
        """[N, C] softmax probabilities of decoded RGB images (any size), in batches."""
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = [self.preprocessing.prepare(im) for im in images[start : start + self.batch_size]]
            batch = self.preprocessing.batch(chunk, names[start : start + self.batch_size])
            inputs = batch.model_inputs(self.input_names, self.device, self.source.dtype)
            out.append(self.model(**inputs).float().softmax(dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), np.float32)

    def predict(self, sources: Iterable[tuple[str, ImageSource]]) -> tuple[list[Prediction], list[Failure]]:
        """Predictions for every input that decodes; the others as failures (named, with why)."""
        names, images, failures = [], [], []
        for name, source in sources:
            try:
                images.append(decode(source, name))
                names.append(name)
            except UnreadableImageError as err:
                failures.append(Failure(name, str(err)))
        probs = self.probabilities(images, names)
        return [Prediction(n, p) for n, p in zip(names, probs, strict=True)], failures
