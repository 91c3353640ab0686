"""Forward+backward cost of ViG-SP against the patch ViG with the same node count, on this machine.

    PYTHONPATH=. python benchmarks/models.py            # ~1 min on 2 CPU cores
    PYTHONPATH=. python benchmarks/models.py --batch 8 --iters 5 --pairs ti

Prints, per pair, the time per image of a training step's forward+backward (best of ``--iters``
steps, the two models measured alternately; on a machine shared with other jobs the minimum is
the estimate least disturbed by their bursts) with the ratio to the patch model (the anchor,
measured in the same run; target for ViG-SP: <= 1.5x). Then where the time goes: ViG-SP's
forward by stage (profiler ranges) and the top operators of a forward+backward step per model.

Superpixel models are fed the superpixel core's *grid* graphs (exactly ``n_segments`` nodes,
padded to the model's ``max_nodes``), so both models of a pair see the same number of nodes;
SLIC would give a varying, usually smaller count.

Finally the dense kNN's memory: the activations a ViG-Ti keeps for backward are measured per
node (saved-tensor hooks) and compared with the ``4 * B * N^2``-byte distance matrix that an
unchunked dense kNN builds per Grapher. ``vigsp.models.knn.masked_knn`` computes it in row
chunks of at most 2^26 distances, so above the printed node count the chunking, not the
matrix, keeps memory linear in N, and the search becomes a compute limit (O(B N^2 C)).
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table
from torch.profiler import ProfilerActivity, profile

from vigsp.models import create_model
from vigsp.models.example_inputs import example_inputs

PAIRS = {
    "ti": ("vig_ti_patch", "vig_sp196_ti", 4),  # anchor, contender, default batch
    "tiny": ("vig_tiny_patch", "vig_sp_tiny", 64),
}
STAGES = ("vigsp.unet", "vigsp.pixel_gcn", "vigsp.pool_embed", "vigsp.backbone")


def train_step(model: torch.nn.Module, args: tuple) -> None:
    model.zero_grad(set_to_none=True)
    model(*args).logsumexp(1).sum().backward()


def inputs_for(model: torch.nn.Module, batch: int) -> tuple:
    return example_inputs(model, batch, seed=0, superpixel_method="grid")


def time_pair(anchor: torch.nn.Module, other: torch.nn.Module, batch: int, iters: int) -> tuple[float, float]:
    """Best seconds per image of a forward+backward for each model, measured alternately."""
    runs = {"anchor": (anchor, inputs_for(anchor, batch)), "other": (other, inputs_for(other, batch))}
    times: dict[str, list[float]] = {"anchor": [], "other": []}
    for model, args in runs.values():
        train_step(model, args)  # warm-up: allocator, oneDNN primitive caches
    for _ in range(iters):
        for key, (model, args) in runs.items():
            start = time.perf_counter()
            train_step(model, args)
            times[key].append((time.perf_counter() - start) / batch)
    return min(times["anchor"]), min(times["other"])


def top_ops(
    model: torch.nn.Module, args: tuple, rows: int
) -> tuple[list[tuple[str, float]], dict[str, float]]:
    """Top operators (self CPU share of a forward+backward) and forward time per ViG-SP stage."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):  # two steps: one step's profile is at the mercy of a single hiccup
            train_step(model, args)
    events = prof.key_averages()
    ops = [e for e in events if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in ops) or 1.0
    ops.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    stages = {e.key: e.cpu_time_total / 1e3 for e in events if e.key in STAGES}
    return [(e.key.removeprefix("aten::"), e.self_cpu_time_total / total) for e in ops[:rows]], stages


def saved_bytes_per_node(name: str, batch: int = 2) -> tuple[float, int]:
    """Bytes of activations the ViG backbone keeps for backward per node, and its depth.

    Measured with saved-tensor hooks (unique storages) on a training-mode forward of the backbone
    alone, fed a patch-sized node set.
    """
    backbone = create_model(name).backbone.train()
    num_nodes = 196
    x = torch.randn(batch, backbone.channels, num_nodes, requires_grad=True)
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        backbone(x)
    return sum(storages.values()) / (batch * num_nodes), len(backbone.blocks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=["ti", "tiny"])
    parser.add_argument(
        "--batch", type=int, default=None, help="images per step (default: 4 at 224 px, 64 tiny)"
    )
    parser.add_argument("--iters", type=int, default=10, help="timed steps per model (best reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--top", type=int, default=6, help="operators listed per model")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    console = Console()
    console.print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU fp32, training mode")

    table = Table(title="forward+backward per image (best of --iters), ratio to the patch ViG of the pair")
    for col in ("model", "nodes", "input", "batch", "ms/img", "img/s", "ratio"):
        table.add_column(col, justify="left" if col == "model" else "right")
    profiles = []
    for pair in args.pairs:
        anchor_name, other_name, default_batch = PAIRS[pair]
        batch = args.batch or default_batch
        anchor, other = create_model(anchor_name), create_model(other_name)
        t_anchor, t_other = time_pair(anchor, other, batch, args.iters)
        for model, name, seconds in ((anchor, anchor_name, t_anchor), (other, other_name, t_other)):
            model_args = inputs_for(model, batch)
            nodes = (
                f"{model_args[3].sum(1).float().mean():.0f}/{model_args[3].shape[1]}"
                if len(model_args) > 1
                else (str(model.num_nodes))
            )
            table.add_row(
                name,
                nodes,
                f"{model.img_size}",
                str(batch),
                f"{seconds * 1e3:.1f}",
                f"{1 / seconds:.0f}",
                f"{seconds / t_anchor:.2f}x",
            )
            profiles.append((name, *top_ops(model, model_args, args.top)))
    console.print(table)
    console.print(
        "[dim]nodes for ViG-SP: mean valid / padded per image (grid graphs, see the docstring)[/dim]"
    )

    for name, ops, stages in profiles:
        line = ", ".join(f"{op} {share:.0%}" for op, share in ops)
        console.print(f"[bold]{name}[/bold] top ops (self CPU, fwd+bwd): {line}")
        if stages:
            total = sum(stages.values())
            split = ", ".join(f"{k.removeprefix('vigsp.')} {v / total:.0%}" for k, v in stages.items())
            console.print(f"    forward by stage: {split}")

    per_node, depth = saved_bytes_per_node("vig_ti_patch")
    crossover = per_node / 4  # 4 * N^2 bytes (one image's distance matrix) == per_node * N
    gpu_bytes, gpu_batch = 80e9, 64
    n_full = (gpu_bytes / (4 * gpu_batch)) ** 0.5
    console.print(
        f"\nkNN memory (ViG-Ti): activations kept for backward = {per_node / 1e6:.2f} MB per node "
        f"(all {depth} blocks). One unchunked N x N fp32 distance "
        f"matrix per image outgrows them from N ~ {crossover:,.0f}; at batch {gpu_batch} it alone fills "
        f"{gpu_bytes / 1e9:.0f} GB at N ~ {n_full:,.0f}. masked_knn chunks rows (<= 2^26 distances, 256 MiB) "
        f"so memory stays linear in N; beyond that the O(B N^2 C) search time is the limit."
    )


if __name__ == "__main__":
    main()
