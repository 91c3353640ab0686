"""Dilated k-nearest-neighbour graphs over padded node sets, as in Vision GNN's Grapher.

Memory: the search builds a dense ``B x rows x N`` float32 distance block per Grapher. It is
computed without autograd and freed after ``topk``, so it is transient; left whole it is
``4 * B * N**2`` bytes, quadratic in N, while the activations kept for backward grow linearly.
``benchmarks/models.py`` measures the crossover on ViG-Ti (C=192, 12 blocks): the backbone keeps
~0.33 MB per node for backward, so one image's whole N x N matrix outgrows the *entire*
backbone's saved activations from N ~ 80 000 nodes, and at batch 64 the matrix alone fills an
80 GB GPU from N ~ 17 700. We therefore split the rows into chunks of at most
``max_block_elems`` distances (2^26, 256 MiB in float32): memory stays linear in N at any node
count, and the dense search becomes a compute limit (``O(B N^2 C)``) instead of a memory one.
At ViG-SP's node counts (<= a few hundred) one chunk holds the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

DEFAULT_MAX_BLOCK_ELEMS = 1 << 26


@torch.no_grad()
def masked_knn(
    x: Tensor,
    k: int,
    dilation: int = 1,
    mask: Tensor | None = None,
    max_block_elems: int = DEFAULT_MAX_BLOCK_ELEMS,
) -> Tensor:
    """Indices ``[B, N, k]`` of each node's dilated k nearest valid neighbours (itself included).

    Features are L2-normalised first and ranked by squared Euclidean distance, like the official
    ViG (``DenseDilatedKnnGraph``): take the ``k * dilation`` nearest and keep every
    ``dilation``-th. Padded nodes (``mask`` False) are never picked. When a graph has fewer valid
    nodes than the slots need, the spare slots repeat the node's own index, which leaves a
    max-relative aggregation unchanged because the node itself is always among its neighbours.
    Rows of padded nodes are filled with their own index.
    """
    batch, num_nodes, _ = x.shape
    # Rank in float32 at least (bf16/fp16 distances would reorder near neighbours).
    feats = F.normalize(x if x.dtype == torch.float64 else x.float(), p=2.0, dim=-1)
    sq_norm = feats.square().sum(-1)  # 1, or 0 for an all-zero feature vector
    want = k * dilation
    take = min(want, num_nodes)
    own = torch.arange(num_nodes, device=x.device)
    rows = max(1, min(num_nodes, max_block_elems // max(1, batch * num_nodes)))
    chunks = []
    for start in range(0, num_nodes, rows):
        stop = min(num_nodes, start + rows)
        dist = sq_norm[:, start:stop, None] - 2 * feats[:, start:stop] @ feats.transpose(1, 2)
        dist += sq_norm[:, None, :]
        if mask is not None:
            dist.masked_fill_(~mask[:, None, :], float("inf"))
        nearest, idx = torch.topk(dist, k=take, dim=-1, largest=False)  # ascending distance
        idx = idx[..., ::dilation]
        picked_padding = torch.isinf(nearest[..., ::dilation])
        if mask is not None:
            picked_padding |= ~mask[:, start:stop, None]
        chunks.append(torch.where(picked_padding, own[start:stop, None], idx))
    idx = torch.cat(chunks, dim=1)
    if idx.shape[-1] < k:  # fewer nodes than k * dilation: pad with self
        fill = own.view(1, -1, 1).expand(batch, num_nodes, k - idx.shape[-1])
        idx = torch.cat([idx, fill], dim=-1)
    return idx
