"""What an elastic resume of a ZeRO checkpoint costs: the one-time universal conversion
(vigsp/train/reshard.py) against DeepSpeed's own save of the same tag, measured in the same run.

    python benchmarks/reshard.py                        # 5, 20 and 80 M parameters, ZeRO 2, 2 ranks
    python benchmarks/reshard.py --params-m 50 --stage 1

For each size, 2 gloo ranks (spawned here) build a stack of Linear layers with AdamW under ZeRO,
take one step so that the moments exist, and ``save_checkpoint`` (the anchor: seconds, timed on rank
0 between barriers). Then ``reshard._convert`` turns the tag into its universal copy as the resume
on another world size would (DeepSpeed's ``ds_to_universal`` in a subprocess, plus our manifest).
Reported: both times, the tag's size, and conversion / save.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
from rich.console import Console
from rich.table import Table

WIDTH = 1024  # one layer: WIDTH x WIDTH weights + bias, about 1.05 M parameters


def _save_tag(rank: int, world: int, port: int, layers: int, stage: int, root: str, out: str) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port), DS_ACCELERATOR="cpu",
    )  # fmt: skip
    import deepspeed

    deepspeed.init_distributed("gloo", auto_mpi_discovery=False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(WIDTH, WIDTH) for _ in range(layers)])
    config = {
        "train_batch_size": 2 * world,
        "train_micro_batch_size_per_gpu": 2,
        "zero_optimization": {"stage": stage},
        "steps_per_print": 2**31 - 1,
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    engine.backward(engine(torch.randn(2, WIDTH)).square().mean())
    engine.step()
    torch.distributed.barrier()
    started = time.perf_counter()
    engine.save_checkpoint(root, tag="step_00000001", save_latest=False)
    torch.distributed.barrier()
    if rank == 0:
        Path(out).write_text(f"{time.perf_counter() - started}\n")
    torch.distributed.destroy_process_group()


def measure(params_m: int, stage: int, directory: Path) -> dict[str, float]:
    from vigsp.train.distributed import free_port
    from vigsp.train.reshard import UNIVERSAL, _convert

    layers = max(1, round(params_m / (WIDTH * (WIDTH + 1) / 1e6)))
    out = directory / "save_s.txt"
    mp.spawn(_save_tag, args=(2, free_port(), layers, stage, str(directory), str(out)), nprocs=2)
    tag_dir = directory / "step_00000001"
    size = sum(p.stat().st_size for p in tag_dir.rglob("*") if p.is_file())
    started = time.perf_counter()
    _convert(tag_dir, tag_dir / UNIVERSAL)
    convert_s = time.perf_counter() - started
    save_s = float(out.read_text())
    params_m = layers * WIDTH * (WIDTH + 1) / 1e6
    return {"params_m": params_m, "mb": size / 1e6, "save": save_s, "convert": convert_s}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params-m", type=int, nargs="+", default=[5, 20, 80])
    parser.add_argument("--stage", type=int, choices=(1, 2), default=2)
    args = parser.parse_args()
    table = Table(title=f"universal conversion vs save, ZeRO {args.stage}, 2 ranks")
    for column in ("parameters", "tag MB", "save s", "convert s", "convert / save"):
        table.add_column(column, justify="right")
    for params_m in args.params_m:
        with tempfile.TemporaryDirectory() as tmp:
            row = measure(params_m, args.stage, Path(tmp))
        table.add_row(
            f"{row['params_m']:.1f} M", f"{row['mb']:.0f}", f"{row['save']:.2f}", f"{row['convert']:.2f}",
            f"{row['convert'] / row['save']:.1f}x",
        )  # fmt: skip
    Console().print(table)


if __name__ == "__main__":
    main()
