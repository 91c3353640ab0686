"""Mixup and CutMix on a batch (timm's batch mode): images mixed with the batch reversed.

Superpixel models get mixed pixels only: their label maps and node features stay those of the
unmixed image, since two superpixel graphs cannot be blended. Targets become soft labels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


class Mixup:
    """Per batch: with both alphas > 0, CutMix or Mixup with probability 1/2 each (as timm's default).

    It owns the generator its draws come from (``seed``: one per rank), and checkpoints it with
    ``state_dict()``, so a resumed run mixes the batches an uninterrupted one would have.
    """

    def __init__(
        self,
        mixup_alpha: float,
        cutmix_alpha: float,
        num_classes: int,
        label_smoothing: float,
        seed: Sequence[int] | int = 0,
    ):
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.rng = np.random.default_rng(seed)

    def state_dict(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state

    @property
    def enabled(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def _one_hot(self, labels: Tensor) -> Tensor:
        off = self.label_smoothing / self.num_classes
        target = torch.full((len(labels), self.num_classes), off, device=labels.device)
        return target.scatter_(1, labels[:, None], 1.0 - self.label_smoothing + off)

    def __call__(
        self, images: Tensor, labels: Tensor, rng: np.random.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        rng = rng if rng is not None else self.rng
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < 0.5)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        flipped = images.flip(0)
        if use_cutmix:
            height, width = images.shape[-2:]
            cut = np.sqrt(1.0 - lam)
            ch, cw = int(height * cut), int(width * cut)
            cy, cx = int(rng.integers(height)), int(rng.integers(width))
            y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, height)
            x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, width)
            images = images.clone()
            images[..., y0:y1, x0:x1] = flipped[..., y0:y1, x0:x1]
            lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)  # the area really pasted
        else:
            images = images * lam + flipped * (1.0 - lam)
        target = self._one_hot(labels)
        return images, target * lam + target.flip(0) * (1.0 - lam)
