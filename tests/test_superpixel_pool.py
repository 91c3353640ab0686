"""Superpixel pooling (``superpixel_pool``) against references: a per-node loop for the values,
and torch's own ``scatter_add``/``scatter_reduce(amax)`` with autograd for values and gradients,
bit for bit, on random, tie-heavy and real superpixel inputs."""

from __future__ import annotations

import pytest
import torch

from vigsp.models.example_inputs import core_superpixels
from vigsp.models.superpixel_nodes import superpixel_pool


def scatter_reference(pixels: torch.Tensor, labels: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """The per-channel scatter formulation (the implementation before row pooling)."""
    batch, channels = pixels.shape[:2]
    flat = pixels.flatten(2).to(torch.promote_types(pixels.dtype, torch.float32))
    index = labels.reshape(batch, 1, -1).long().expand(-1, channels, -1)
    sums = flat.new_zeros(batch, channels, num_nodes).scatter_add_(2, index, flat)
    counts = torch.zeros(batch, num_nodes, dtype=flat.dtype).scatter_add_(
        1, index[:, 0], torch.ones_like(flat[:, 0])
    )
    means = sums / counts.clamp(min=1).unsqueeze(1)
    maxes = flat.new_zeros(batch, channels, num_nodes).scatter_reduce(
        2, index, flat, "amax", include_self=False
    )
    return torch.cat([means, maxes], dim=1).transpose(1, 2)


def loop_reference(pixels: torch.Tensor, labels: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """Node by node, in float64: mean and max of the pixels carrying each label."""
    batch, channels = pixels.shape[:2]
    out = torch.zeros(batch, num_nodes, 2 * channels, dtype=torch.float64)
    for b in range(batch):
        for n in range(num_nodes):
            members = pixels[b].double().flatten(1)[:, labels[b].flatten() == n]
            if members.shape[1]:
                out[b, n] = torch.cat([members.mean(1), members.amax(1)])
    return out


def random_labels(batch: int, height: int, width: int, used: int, seed: int) -> torch.Tensor:
    """Blocky label maps using ids 0..used-1 (every id present)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, used, (batch, height // 4 + 1, width // 4 + 1), generator=gen)
    labels = labels.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, :height, :width].contiguous()
    labels[:, 0, :used] = torch.arange(used)  # every id appears at least once
    return labels


PIXEL_KINDS = {
    "random": lambda shape, gen: torch.randn(shape, generator=gen),
    "ties": lambda shape, gen: torch.randint(0, 3, shape, generator=gen).float(),
    "zeros": lambda shape, gen: torch.zeros(shape),
    "nonpositive ties": lambda shape, gen: -torch.randint(0, 2, shape, generator=gen).float(),
}


def _values_and_grad(fn, pixels, labels, num_nodes, upstream):
    """Output and the gradient that reaches the layer before pooling (a non-leaf, so autograd
    hands it over in the layout pooling produced, not re-strided like a leaf's ``.grad``)."""
    leaf = pixels.clone().requires_grad_()
    x = leaf * 1  # keeps the memory format
    seen = []
    x.register_hook(seen.append)
    out = fn(x, labels, num_nodes)
    out.backward(upstream)
    return out.detach(), seen[0]


@pytest.mark.parametrize("kind", sorted(PIXEL_KINDS))
@pytest.mark.parametrize("channels_last", [False, True])
def test_pool_equals_torch_scatter_bit_for_bit(kind, channels_last):
    gen = torch.Generator().manual_seed(1)
    batch, channels, height, width, used, num_nodes = 3, 5, 13, 11, 7, 10  # nodes 7..9: padding
    labels = random_labels(batch, height, width, used, seed=2)
    pixels = PIXEL_KINDS[kind]((batch, channels, height, width), gen)
    if channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(batch, num_nodes, 2 * channels, generator=gen)
    out, grad = _values_and_grad(superpixel_pool, pixels, labels, num_nodes, upstream)
    ref_out, ref_grad = _values_and_grad(scatter_reference, pixels, labels, num_nodes, upstream)
    assert torch.equal(out, ref_out)
    assert torch.equal(grad, ref_grad)
    # in the maps' own memory format, so the layers before pooling run their usual backward kernels
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert grad.is_contiguous(memory_format=fmt)
    assert torch.equal(out[:, used:], torch.zeros_like(out[:, used:]))  # padding rows are zeros
    assert torch.allclose(out.double(), loop_reference(pixels, labels, num_nodes), rtol=1e-6, atol=1e-6)


def test_ties_share_the_gradient_evenly():
    pixels = torch.tensor([[[[1.0, 1.0, 0.5, 2.0]]]])  # one channel, two nodes: labels 0 0 0 1
    labels = torch.tensor([[[0, 0, 0, 1]]])
    upstream = torch.zeros(1, 2, 2)
    upstream[0, 0, 1] = 1.0  # d/d(max of node 0)
    _, grad = _values_and_grad(superpixel_pool, pixels, labels, 2, upstream)
    assert grad.flatten().tolist() == [0.5, 0.5, 0.0, 0.0]


def test_pool_on_real_superpixels_and_bf16_features():
    """SLIC label maps of real images, UNet-like bf16 features: values and gradients as torch's."""
    import numpy as np
    import skimage.data

    images = np.stack([skimage.data.astronaut()[::8, ::8], skimage.data.chelsea()[::4, ::4][:64, :64]])
    graphs = core_superpixels(np.ascontiguousarray(images), "slic", 40)
    labels = torch.from_numpy(np.stack([g[0] for g in graphs]).astype(np.int64))
    num_nodes = int(labels.max()) + 4
    gen = torch.Generator().manual_seed(3)
    pixels = torch.randn(2, 8, 64, 64, generator=gen).to(torch.bfloat16)
    upstream = torch.randn(2, num_nodes, 16, generator=gen)
    out, grad = _values_and_grad(superpixel_pool, pixels, labels, num_nodes, upstream)
    ref_out, ref_grad = _values_and_grad(scatter_reference, pixels, labels, num_nodes, upstream)
    assert out.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert torch.equal(out, ref_out) and torch.equal(grad, ref_grad)
