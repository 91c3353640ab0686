"""Packing of padded node sets: every layer after the stem works on the valid nodes only.

A batch of graphs arrives padded to ``[B, N, C]`` with a ``[B, N]`` node mask. Packing the
valid rows into one ``[M, C]`` tensor makes the per-node layers (1x1 convolutions, BatchNorm,
GELU, the FFN) skip the padding by construction: BatchNorm statistics, FLOPs and pooling see
exactly the M real nodes, so no layer needs its own masking logic. Only the kNN search needs
the padded view, which :meth:`NodeLayout.unpack` restores.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class NodeLayout:
    """Where the valid nodes of a padded ``[B, N]`` node set sit in the packed ``[M, C]`` tensor."""

    batch_size: int
    num_nodes: int
    mask: Tensor | None
    """``[B, N]`` bool, or None when every node is valid (patch models)."""
    flat_index: Tensor
    """``[M]`` int64: the row-major position ``b * N + n`` of each packed node."""
    batch_index: Tensor
    """``[M]`` int64: which graph each packed node belongs to."""
    counts: Tensor
    """``[B]`` int64: valid nodes per graph."""

    @classmethod
    def dense(cls, batch_size: int, num_nodes: int, device: torch.device | str) -> NodeLayout:
        """Every node valid: packing is a plain reshape."""
        flat = torch.arange(batch_size * num_nodes, device=device)
        return cls(
            batch_size=batch_size,
            num_nodes=num_nodes,
            mask=None,
            flat_index=flat,
            batch_index=flat // num_nodes,
            counts=torch.full((batch_size,), num_nodes, device=device, dtype=torch.long),
        )

    @classmethod
    def from_mask(cls, mask: Tensor) -> NodeLayout:
        if mask.dim() != 2 or mask.dtype != torch.bool:
            raise ValueError(f"node_mask must be a [B, N] bool tensor, got {tuple(mask.shape)} {mask.dtype}")
        batch_size, num_nodes = mask.shape
        flat = torch.nonzero(mask.reshape(-1), as_tuple=False).squeeze(1)
        return cls(
            batch_size=batch_size,
            num_nodes=num_nodes,
            mask=mask,
            flat_index=flat,
            batch_index=flat // num_nodes,
            counts=mask.sum(1),
        )

    @property
    def num_packed(self) -> int:
        return int(self.flat_index.numel())

    def pack(self, x: Tensor) -> Tensor:
        """``[B, N, C]`` -> ``[M, C]`` (valid rows, row-major)."""
        flat = x.reshape(self.batch_size * self.num_nodes, *x.shape[2:])
        return flat if self.mask is None else flat.index_select(0, self.flat_index)

    def unpack(self, x: Tensor) -> Tensor:
        """``[M, C]`` -> ``[B, N, C]`` with zeros in the padded rows."""
        shape = (self.batch_size, self.num_nodes, *x.shape[1:])
        if self.mask is None:
            return x.reshape(shape)
        out = x.new_zeros(self.batch_size * self.num_nodes, *x.shape[1:])
        return out.index_copy(0, self.flat_index, x).reshape(shape)

    def neighbours_to_packed(self, idx: Tensor) -> Tensor:
        """Per-graph neighbour ids ``[B, N, k]`` (all pointing at valid nodes) -> packed ids ``[M, k]``."""
        offsets = torch.arange(self.batch_size, device=idx.device).view(-1, 1, 1) * self.num_nodes
        flat = (idx + offsets).reshape(self.batch_size * self.num_nodes, -1)
        if self.mask is None:
            return flat
        return self._packed_position[flat.index_select(0, self.flat_index)]

    @cached_property
    def _packed_position(self) -> Tensor:
        """``[B * N]`` int64: packed row of each padded slot, -1 for padding (built once per batch)."""
        position = torch.full(
            (self.batch_size * self.num_nodes,), -1, dtype=torch.long, device=self.flat_index.device
        )
        return position.index_copy_(0, self.flat_index, torch.arange(self.num_packed, device=position.device))

    def mean(self, x: Tensor) -> Tensor:
        """Masked mean pooling: ``[M, C]`` -> ``[B, C]`` over each graph's valid nodes."""
        if self.mask is None:
            return x.reshape(self.batch_size, self.num_nodes, -1).mean(1)
        sums = x.new_zeros(self.batch_size, x.shape[1]).index_add_(0, self.batch_index, x)
        return sums / self.counts.clamp(min=1).unsqueeze(1).to(x.dtype)
