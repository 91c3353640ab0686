"""Tests of vigsp.models: ViG faithfulness, masking/padding/permutation invariances, the pixel GCN and kNN.

Every test uses small inputs or shrunken configs; the whole file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vigsp import superpixels as sp
from vigsp.cli import main as cli_main
from vigsp.errors import UserError
from vigsp.models import ViG, ViGSP, create_model, list_models
from vigsp.models.example_inputs import (
    collate_superpixels,
    example_inputs,
)
from vigsp.models.knn import masked_knn
from vigsp.models.pixel_gcn import SameLabelGraph
from vigsp.models.summary import count_parameters, flops_per_image
from vigsp.models.superpixel_nodes import FEATURE_NAMES

# A shrunken ViG-SP: same code paths as vig_sp_tiny, a fraction of the cost.
SMALL_SP = dict(
    channels=32,
    depth=5,  # block 4 has dilation 2
    num_classes=7,
    img_size=32,
    n_segments=12,
    max_nodes=20,
    unet_width=4,
    pixel_channels=8,
    fourier_bands=4,
    head_hidden=64,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def small_sp(**overrides) -> ViGSP:
    return create_model("vig_sp_tiny", **{**SMALL_SP, **overrides})


def calibrated_double(model: ViGSP, training: bool) -> ViGSP:
    """float64 (so that comparisons are not at the mercy of float32 rounding in near-tied kNN
    distances) with BatchNorm running statistics from a few training batches (realistic eval)."""
    model.double().train()
    with torch.no_grad():
        for seed in (10, 11):
            model(*_double(_inputs(model, seed=seed)))
    return model.train(training)


def _double(args: tuple) -> tuple:
    return tuple(a.double() if a.is_floating_point() else a for a in args)


# --------------------------------------------------------------------------------------------
# Faithfulness to the official ViG
# --------------------------------------------------------------------------------------------


def official_param_count(channels: int, depth: int, classes: int = 1000) -> int:
    """Parameters of the official vig_pytorch DeepGCN, layer by layer (conv weights + biases, BN affine)."""

    def conv(c_in: int, c_out: int, kernel: int = 1, groups: int = 1) -> int:
        return c_in // groups * c_out * kernel * kernel + c_out

    def bn(c: int) -> int:
        return 2 * c

    c = channels
    stem = sum(
        conv(a, b, 3) + bn(b) for a, b in [(3, c // 8), (c // 8, c // 4), (c // 4, c // 2), (c // 2, c)]
    )
    stem += conv(c, c, 3) + bn(c)
    pos_embed = c * 14 * 14
    grapher = conv(c, c) + bn(c) + conv(2 * c, 2 * c, groups=4) + bn(2 * c) + conv(2 * c, c) + bn(c)
    ffn = conv(c, 4 * c) + bn(4 * c) + conv(4 * c, c) + bn(c)
    head = conv(c, 1024) + bn(1024) + conv(1024, classes)
    return stem + pos_embed + depth * (grapher + ffn) + head


@pytest.mark.parametrize(
    ("name", "channels", "depth", "published_m", "tolerance"),
    [
        # The paper's 7.1M is the official code's 7,184,744 truncated to one decimal (mmpretrain lists
        # 7.18M for the converted official weights): no faithful model is within 1% of 7.1, so 1.2% here.
        ("vig_ti_patch", 192, 12, 7.1, 0.012),
        ("vig_s_patch", 320, 16, 22.7, 0.01),
        ("vig_b_patch", 640, 16, 86.8, 0.01),
    ],
)
def test_published_parameter_counts(
    name: str, channels: int, depth: int, published_m: float, tolerance: float
):
    with torch.device("meta"):  # no memory, no init cost
        model = create_model(name)
    n = count_parameters(model)
    assert n == official_param_count(channels, depth)
    assert abs(n / 1e6 - published_m) / published_m < tolerance
    assert math.floor(n / 1e5) / 10 == published_m  # the paper's figures are truncated, not rounded


def test_vig_ti_flops_match_published() -> None:
    model = create_model("vig_ti_patch")
    gmacs = flops_per_image(model) / 2e9  # FlopCounterMode counts 2 FLOPs per multiply-add
    assert abs(gmacs - 1.3) / 1.3 < 0.03  # paper: 1.3 G; mmpretrain: 1.31 G


def test_knn_and_dilation_schedule_follow_official() -> None:
    model = create_model("vig_ti_patch")
    assert model.backbone.knn == [9, 9, 10, 11, 12, 13, 13, 14, 15, 16, 17, 18]
    assert model.backbone.dilations == [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    s = create_model("vig_s_patch")
    assert s.backbone.dilations == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4  # N // max_k = 196 // 18 = 10


def _official_forward(model: ViG, images: torch.Tensor, training: bool) -> torch.Tensor:
    """The official code's computation in its own layout ([B, C, N, 1], Conv2d, BatchNorm2d,
    ``topk`` on pairwise distances, ``batched_index_select``, concat-then-reshape interleaving),
    written independently here and driven by ``model``'s parameters."""

    def bn(x, m):
        return F.batch_norm(x, None if training else m.running_mean, None if training else m.running_var,
                            m.weight, m.bias, training, 0.0, m.eps)  # fmt: skip

    def fc(x, lin, groups=1):
        return F.conv2d(x, lin.weight[:, :, None, None], lin.bias, groups=groups)

    x = model.stem(images)
    b, c, h, w = x.shape
    x = x + model.pos_embed.transpose(1, 2).reshape(1, c, h, w)
    for (grapher, ffn), k, d in zip(
        model.backbone.blocks, model.backbone.knn, model.backbone.dilations, strict=True
    ):
        shortcut = x
        y = bn(fc(x, grapher.fc1[0]), grapher.fc1[1]).reshape(b, c, -1, 1)
        n = y.shape[2]
        # DenseDilatedKnnGraph: normalise, pairwise distance, topk(-dist, k*d), keep every d-th
        z = F.normalize(y, p=2.0, dim=1).squeeze(-1).transpose(1, 2)
        sq = (z * z).sum(-1, keepdim=True)
        dist = sq - 2 * z @ z.transpose(1, 2) + sq.transpose(1, 2)
        nn_idx = torch.topk(-dist, k=k * d)[1][:, :, ::d]
        flat = y.squeeze(-1).transpose(1, 2).reshape(b * n, c)
        offsets = torch.arange(b).view(-1, 1, 1) * n
        x_j = flat[(nn_idx + offsets).reshape(-1)].view(b, n, k, c).permute(0, 3, 1, 2)
        x_i = y.expand(-1, -1, -1, k)
        rel = torch.max(x_j - x_i, -1, keepdim=True)[0]
        cat = torch.cat([y.unsqueeze(2), rel.unsqueeze(2)], dim=2).reshape(b, 2 * c, n, 1)
        gc = grapher.graph_conv
        y = F.gelu(bn(F.conv2d(cat, gc.fc.weight[:, :, None, None], gc.fc.bias, groups=4), gc.norm))
        y = bn(fc(y, grapher.fc2[0]), grapher.fc2[1])
        x = y.reshape(b, c, h, w) + shortcut
        y = F.gelu(bn(fc(x, ffn.fc1[0]), ffn.fc1[1]))
        x = bn(fc(y, ffn.fc2[0]), ffn.fc2[1]) + x
    x = F.adaptive_avg_pool2d(x, 1)
    head = model.backbone.head
    x = F.gelu(bn(fc(x, head[0]), head[1]))
    return fc(x, head[4]).flatten(1)


@pytest.mark.parametrize("training", [False, True])
def test_patch_vig_matches_official_formulation(training: bool) -> None:
    model = create_model("vig_tiny_patch", channels=32, depth=5, head_hidden=64).double()
    with torch.no_grad():  # non-trivial BN statistics and affine parameters
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        model.pos_embed.normal_(std=0.1)
    model.train(training)
    images = torch.rand(3, 3, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        expected = _official_forward(model, images, training)
        got = model(images)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------------------
# Shapes, registry, CLI
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_builds_and_has_the_right_output_shape(name: str) -> None:
    big = name in ("vig_s_patch", "vig_b_patch")
    with torch.device("meta" if big else "cpu"):  # S/B: shape propagation only
        model = create_model(name, num_classes=5)
    assert isinstance(model.needs_superpixels, bool)
    args = example_inputs(model, batch_size=2)
    if big:
        args = tuple(a.to("meta") for a in args)
    model.eval()
    with torch.no_grad():
        out = model(*args)
    assert out.shape == (2, 5)
    if not big:
        assert torch.isfinite(out).all()


def test_unknown_model_and_option_errors_name_the_culprit() -> None:
    with pytest.raises(UserError, match=r"unknown model 'vig_ti_pach'.*vig_ti_patch"):
        create_model("vig_ti_pach")
    with pytest.raises(UserError, match=r"no option\(s\) 'num_clases'.*num_classes"):
        create_model("vig_tiny_patch", num_clases=10)
    with pytest.raises(UserError, match="img_size=50"):
        create_model("vig_tiny_patch", img_size=50)


def test_patch_model_rejects_wrong_image_size() -> None:
    model = create_model("vig_tiny_patch").eval()
    with pytest.raises(ValueError, match="built for 28px"):
        model(torch.rand(1, 3, 64, 64))


def test_models_cli_prints_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["models", "vig_tiny*", "vig_sp_tiny"]) == 0
    out = capsys.readouterr().out
    assert "vig_tiny_patch" in out and "vig_sp_tiny" in out and "vig_ti_patch" not in out
    params = count_parameters(create_model("vig_tiny_patch"))
    assert f"{params / 1e6:.2f}M" in out
    assert cli_main(["models", "nothing*"]) == 2
    assert "no registered model matches" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Superpixel inputs: invariances and errors
# --------------------------------------------------------------------------------------------


def test_feature_layout_matches_superpixel_core() -> None:
    assert tuple(sp.FEATURE_NAMES) == FEATURE_NAMES


def _inputs(model: ViGSP, batch: int = 3, seed: int = 1):
    images, labels, feats, mask = example_inputs(model, batch_size=batch, seed=seed)
    assert (mask.sum(1) > 3).all() and not mask.all()  # real SLIC graphs of different sizes, padded
    return images, labels, feats, mask


def _relabel(labels, feats, mask, new_slot: list[np.ndarray], num_slots: int, garbage: float = 7.0):
    """Move node i of image b to row new_slot[b][i] of a ``num_slots`` padding; fill the rest with junk."""
    batch = labels.shape[0]
    out_feats = torch.full((batch, num_slots, feats.shape[2]), garbage, dtype=feats.dtype)
    out_mask = torch.zeros(batch, num_slots, dtype=torch.bool)
    out_labels = torch.empty_like(labels)
    for b in range(batch):
        slots = torch.as_tensor(new_slot[b])
        n = len(slots)
        out_feats[b, slots] = feats[b, :n]
        out_mask[b, slots] = True
        out_labels[b] = slots[labels[b]]
    return out_labels, out_feats, out_mask


@pytest.mark.parametrize("training", [False, True])
def test_outputs_invariant_to_superpixel_order(training: bool) -> None:
    model = calibrated_double(small_sp(), training)
    images, labels, feats, mask = _double(_inputs(model))
    rng = np.random.default_rng(0)
    perms = [rng.permutation(int(n)) for n in mask.sum(1)]
    p_labels, p_feats, p_mask = _relabel(labels, feats, mask, perms, mask.shape[1])
    assert not torch.equal(p_labels, labels)
    with torch.no_grad():
        torch.testing.assert_close(
            model(images, p_labels, p_feats, p_mask), model(images, labels, feats, mask)
        )


@pytest.mark.parametrize("training", [False, True])
@pytest.mark.parametrize("scattered", [False, True])
def test_outputs_unchanged_by_more_padding(training: bool, scattered: bool) -> None:
    """Padded rows (filled with junk here) must not reach kNN, BatchNorm or pooling."""
    model = calibrated_double(small_sp(), training)
    images, labels, feats, mask = _double(_inputs(model))
    slots = 2 * mask.shape[1] + 5
    rng = np.random.default_rng(1)
    new_slot = [
        np.sort(rng.choice(slots, int(n), replace=False)) if scattered else np.arange(int(n))
        for n in mask.sum(1)
    ]
    p_labels, p_feats, p_mask = _relabel(labels, feats, mask, new_slot, slots)
    with torch.no_grad():
        torch.testing.assert_close(
            model(images, p_labels, p_feats, p_mask), model(images, labels, feats, mask)
        )


def test_backbone_graphs_in_a_batch_do_not_interact() -> None:
    """Eval mode: each padded graph of a batch gives the logits it gives alone (kNN stays in-graph)."""
    model = create_model("vig_tiny_patch", channels=32, depth=5, head_hidden=64).double()
    backbone = calibrated_backbone(model.backbone)
    x = torch.randn(3, 32, 30, dtype=torch.float64)
    mask = torch.zeros(3, 30, dtype=torch.bool)
    for b, n in enumerate((30, 17, 6)):
        mask[b, torch.randperm(30)[:n]] = True
    with torch.no_grad():
        together = backbone(x, mask)
        alone = torch.cat([backbone(x[b : b + 1, :, mask[b]]) for b in range(3)])
    torch.testing.assert_close(together, alone)


def test_patch_model_is_the_backbone_with_an_all_true_mask() -> None:
    backbone = calibrated_backbone(create_model("vig_tiny_patch", channels=32, depth=3).backbone)
    x = torch.randn(2, 32, 49)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x, torch.ones(2, 49, dtype=torch.bool)), backbone(x))


def calibrated_backbone(backbone):
    with torch.no_grad():
        for _ in range(2):
            backbone.train()(torch.randn(4, backbone.channels, 30, dtype=next(backbone.parameters()).dtype))
    return backbone.eval()


def test_bad_superpixel_inputs_raise_clear_errors() -> None:
    model = small_sp().eval()
    images, labels, feats, mask = _inputs(model)
    n = mask.shape[1]
    too_big = labels.clone()
    too_big[0, 0, 0] = n
    with pytest.raises(ValueError, match=rf"labels must lie in \[0, N={n}\).*\[0, {n}\]"):
        model(images, too_big, feats, mask)
    negative = labels.clone()
    negative[1, 2, 3] = -1
    with pytest.raises(ValueError, match="must lie in"):
        model(images, negative, feats, mask)
    hidden = mask.clone()
    hidden[0, 0] = False
    with pytest.raises(ValueError, match="node_mask entry is False"):
        model(images, labels, feats, hidden)
    with pytest.raises(ValueError, match=r"node_features must be \[B, N, 13\]"):
        model(images, labels, feats[..., :12], mask)
    with pytest.raises(ValueError, match="labels must be an integer tensor"):
        model(images, labels.float(), feats, mask)


def test_gradients_reach_every_parameter() -> None:
    for model in (small_sp(drop_path_rate=0.0), create_model("vig_tiny_patch", channels=32, depth=2)):
        model.train()
        args = example_inputs(model, batch_size=4, seed=2)
        model(*args).logsumexp(1).sum().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
            # A bias directly followed by BatchNorm has an exactly-cancelled gradient (as in the original).
            if not name.endswith("bias"):
                assert p.grad.abs().sum() > 0, name


# --------------------------------------------------------------------------------------------
# The intra-superpixel pixel GCN against an edge-list loop
# --------------------------------------------------------------------------------------------


def _reference_propagate(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """D^-1/2 (A + I) D^-1/2 x by a plain loop over the pixel edge list; x is [C, H*W]."""
    degree = np.ones(x.shape[1])
    for p, q in edges:
        degree[p] += 1
        degree[q] += 1
    out = x / degree  # self-loop: 1 / sqrt(d_p d_p)
    for p, q in edges:
        weight = 1.0 / math.sqrt(degree[p] * degree[q])
        out[:, p] += weight * x[:, q]
        out[:, q] += weight * x[:, p]
    return out


def _label_maps() -> list[tuple[np.ndarray, sp.SuperpixelGraph]]:
    rng = np.random.default_rng(3)
    smooth = np.kron(rng.integers(0, 256, (5, 6, 3)), np.ones((5, 4, 1))).astype(np.uint8)  # 25x24
    slic = sp.slic_graph(np.ascontiguousarray(smooth), n_segments=10)
    noisy = rng.integers(0, 3, (19, 23)).astype(np.int32)  # 3 labels, many disconnected pieces
    image = rng.integers(0, 256, (19, 23, 3)).astype(np.uint8)
    return [(slic.labels, slic), (noisy, sp.graph_from_labels(image, noisy))]


@pytest.mark.parametrize("case", [0, 1], ids=["slic", "random-labels"])
def test_pixel_gcn_equals_edge_list_reference(case: int) -> None:
    labels, graph = _label_maps()[case]
    height, width = labels.shape
    same_label = SameLabelGraph(torch.from_numpy(labels)[None].long(), torch.float64)
    # the masked formulation's edge bits are exactly the core's pixel_mask
    assert np.array_equal(same_label.right[0, 0].numpy(), (graph.pixel_mask[:, :-1] & sp.SAME_RIGHT) > 0)
    assert np.array_equal(same_label.down[0, 0].numpy(), (graph.pixel_mask[:-1, :] & sp.SAME_DOWN) > 0)
    x = torch.randn(1, 5, height, width, dtype=torch.float64)
    got = same_label.propagate(x)[0].reshape(5, -1).numpy()
    expected = _reference_propagate(x[0].reshape(5, -1).numpy(), graph.pixel_edges())
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------
# Masked kNN
# --------------------------------------------------------------------------------------------


def _reference_knn(x: np.ndarray, mask: np.ndarray, k: int, dilation: int) -> np.ndarray:
    batch, n, _ = x.shape
    out = np.tile(np.arange(n)[None, :, None], (batch, 1, k))
    feats = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    for b in range(batch):
        valid = np.flatnonzero(mask[b])
        for i in valid:
            dist = ((feats[b, valid] - feats[b, i]) ** 2).sum(-1)
            picked = valid[np.argsort(dist, kind="stable")][: k * dilation : dilation]
            out[b, i, : len(picked)] = picked
    return out


@pytest.mark.parametrize(("k", "dilation"), [(4, 1), (4, 2), (3, 3)])
@pytest.mark.parametrize("block", [1 << 26, 37], ids=["whole", "chunked"])
def test_masked_knn_matches_brute_force_and_skips_padding(k: int, dilation: int, block: int) -> None:
    x = torch.randn(3, 20, 8, dtype=torch.float64)
    mask = torch.zeros(3, 20, dtype=torch.bool)
    mask[0] = True
    mask[1, torch.randperm(20)[:13]] = True
    mask[2, torch.randperm(20)[:5]] = True  # fewer valid nodes than k * dilation
    got = masked_knn(x, k, dilation, mask, max_block_elems=block)
    expected = _reference_knn(x.numpy(), mask.numpy(), k, dilation)
    np.testing.assert_array_equal(got.numpy(), expected)
    for b in range(3):
        rows = got[b][mask[b]]
        assert mask[b][rows].all()  # never a padded neighbour
        assert (rows[:, 0] == torch.nonzero(mask[b]).squeeze(1)).all()  # each node is its own nearest


def test_collate_rejects_graphs_larger_than_max_nodes() -> None:
    labels = np.zeros((4, 4), np.int32)
    with pytest.raises(ValueError, match="more than max_nodes=2"):
        collate_superpixels([(labels, np.zeros((3, 13), np.float32))], max_nodes=2)


def test_small_vig_sp_learns_a_synthetic_task() -> None:
    """End to end through UNet, pixel GCN, pooling and backbone: where is the bright square?"""
    rng = np.random.default_rng(5)
    images = rng.integers(0, 60, (32, 32, 32, 3)).astype(np.uint8)
    targets = torch.arange(32) % 4  # quadrant of the square
    for i, q in enumerate(targets.tolist()):
        y, x = divmod(q, 2)
        images[i, 16 * y + 4 : 16 * y + 12, 16 * x + 4 : 16 * x + 12] = rng.integers(180, 256, 3)
    graphs = [(g.labels, g.features) for g in sp.slic_graph_batch(images, n_segments=12, num_threads=1)]
    labels, feats, mask = collate_superpixels(graphs, max(len(f) for _, f in graphs))
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    model = small_sp(num_classes=4).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(pixels, labels, feats, mask), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        accuracy = (model(pixels, labels, feats, mask).argmax(1) == targets).float().mean().item()
    assert losses[-1] < 0.3 * losses[0]
    assert accuracy >= 0.9


@pytest.mark.parametrize("name", ["vig_tiny_patch", "vig_sp_tiny", "vig_sp_grid_tiny"])
def test_models_train_in_bfloat16(name: str) -> None:
    """DeepSpeed's bf16 casts the weights and the engine the float inputs: nothing may stay fp32."""
    model = create_model(name, num_classes=10).to(torch.bfloat16)
    inputs = [x.to(torch.bfloat16) if x.is_floating_point() else x for x in example_inputs(model, 4)]
    logits = model(*inputs)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    logits.float().sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in model.parameters())
