"""One rank's batch, as the loaders hand it to the model (vigsp/data/loader.py), and the errors
a batch can raise: an image DALI cannot decode stops the run with ``BadImageError`` naming the
file (found by re-checking the few files of the failing batches), and a superpixel count above
data.max_nodes (or edges above data.max_edges) with ``GraphCapacityError`` naming the image and
the key."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from vigsp.data.probe import DaliDecodeProbe, Issue, dali_error_summary, probe_file
from vigsp.errors import UserError

__all__ = ["BadImageError", "Batch", "GraphCapacityError", "check_capacity", "explain_pipeline_failure"]


class BadImageError(UserError):
    """A dataset image that the decoder cannot read; the message names it."""


class GraphCapacityError(UserError):
    """An image whose superpixel graph does not fit data.max_nodes / data.max_edges."""


@dataclass
class Batch:
    """One rank's batch. Graph fields are None when the pipeline has no superpixel step, or when
    the loader was not asked for them (``outputs``; training asks for what the model reads, its
    ``ModelInputs.pipeline_outputs``).

    images        [B, 3, S, S] float32, normalised
    labels        [B] int64 class index
    index         [B] int64 position of the image in its split's ImageIndex
    label_maps    [B, S, S] int32 superpixel id of every pixel
    node_features [B, max_nodes, 13] float32 (vigsp.superpixels.FEATURE_NAMES), zero past node_counts
    node_mask     [B, max_nodes] bool, True for real nodes
    node_counts   [B] int32
    edges         [B, max_edges, 2] int32 region-adjacency edges (i < j), -1 past edge_counts
    edge_counts   [B] int32
    pixel_mask    [B, S, S] uint8 intra-superpixel pixel graph (bit 0: right, bit 1: down neighbour)
    """

    images: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    label_maps: torch.Tensor | None = None
    node_features: torch.Tensor | None = None
    node_mask: torch.Tensor | None = None
    node_counts: torch.Tensor | None = None
    edges: torch.Tensor | None = None
    edge_counts: torch.Tensor | None = None
    pixel_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def model_inputs(
        self, names: Sequence[str], device: torch.device, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        """The fields ``names`` (a model's ``input_names``) on ``device``, as the forward's keyword
        arguments; floating-point ones (images, node features) in the training ``dtype``."""
        inputs = {}
        for name in names:
            value = getattr(self, name)
            if value is None:
                raise ValueError(f"the model reads {name!r}, which this batch does not carry")
            value = value.to(device, non_blocking=True)
            inputs[name] = value.to(dtype) if value.is_floating_point() else value
        return inputs

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        moved = {}
        for field in fields(self):
            value = getattr(self, field.name)
            moved[field.name] = value.to(device, non_blocking=non_blocking) if value is not None else None
        return Batch(**moved)


def explain_pipeline_failure(
    err: RuntimeError, paths: Sequence[str], split: str, root: Path, where: str
) -> Exception:
    """A DALI failure near ``paths``: a ``BadImageError`` naming the files that do not decode, or
    the failure itself with ``where`` when they all do."""
    probe = DaliDecodeProbe()
    bad: list[Issue] = [
        issue
        for path in paths
        for issue in probe_file(path, min_size=0, dali=probe)
        if issue.severity == "error"
    ]
    summary = dali_error_summary(str(err))
    if not bad:
        return RuntimeError(f"{where}: {summary}")
    listed = "\n".join(f"  {issue.path}: {issue.kind}: {issue.detail}" for issue in bad)
    return BadImageError(
        f"cannot decode {len(bad)} image(s) of the {split} split ({root}):\n{listed}\n"
        f"{bad[0].advice}. `vigsp data check {root}` lists every such file, and "
        f"`--write-exclude FILE` writes them out for data.exclude_list. (DALI said: {summary})"
    )


def check_capacity(
    path_of: Callable[[int], Path], counts: torch.Tensor, capacity: int, what: str, key: str
) -> None:
    """A ``GraphCapacityError`` naming the first image over ``capacity`` (``path_of(i)``: image i)."""
    over = torch.nonzero(counts > capacity).flatten()
    if over.numel():
        worst = int(counts.max())
        raise GraphCapacityError(
            f"{path_of(int(over[0]))} has {int(counts[over[0]])} {what} after augmentation, more than "
            f"{key} = {capacity} ({over.numel()} such image(s) in this batch, up to {worst}); raise {key} "
            f"to at least {worst} (more padding per image), or lower data.superpixel.n_segments"
        )
