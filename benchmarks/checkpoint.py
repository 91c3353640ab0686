"""What durable, verified checkpoints cost: fsync and the XXH3 manifest against torch.save itself.

    python benchmarks/checkpoint.py                    # 64, 256 and 1024 MB states, in /tmp
    python benchmarks/checkpoint.py --dir /scratch/x --sizes-mb 512

For each size, a state dict of fp32 tensors (like a model + AdamW moments) is written the way a
checkpoint file is: ``torch.save`` (the anchor), then ``fsync`` (TagWriter), then the checksum for
the manifest (the file is still in the page cache), then a re-read checksum as ``verify`` does on
resume. Reported: seconds per GB of each, and what fsync and the checksum each add to the save
(torch.save returns once the data is in the page cache; fsync is the disk write itself).
Medians of ``--repeats`` rounds; each row's figures come from the same rounds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from vigsp.train.durable import fsync_file
from vigsp.train.manifest import checksum


def state_of(megabytes: int) -> dict[str, torch.Tensor]:
    per_tensor = 4 << 20  # 4 MiB tensors, like the large weight matrices of a model
    n = max(1, (megabytes << 20) // per_tensor)
    return {f"t{i}": torch.randn(per_tensor // 4) for i in range(n)}


def one_round(state: dict[str, torch.Tensor], directory: Path) -> dict[str, float]:
    path = directory / "mp_rank_00_model_states.pt"
    times = {}
    start = time.perf_counter()
    torch.save(state, path)
    times["save"] = time.perf_counter() - start
    start = time.perf_counter()
    fsync_file(path)
    times["fsync"] = time.perf_counter() - start
    start = time.perf_counter()
    checksum(path)
    times["checksum"] = time.perf_counter() - start
    start = time.perf_counter()
    checksum(path)  # verify on resume: the same read again
    times["verify"] = time.perf_counter() - start
    times["gigabytes"] = path.stat().st_size / 1e9
    path.unlink()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir in /tmp)")
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    table = Table(title="checkpoint file: seconds per GB, and what fsync and the checksum add to torch.save")
    columns = (
        "state",
        "torch.save s/GB",
        "fsync s/GB",
        "checksum s/GB",
        "verify s/GB",
        "+fsync",
        "+checksum",
    )
    for column in columns:
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for megabytes in args.sizes_mb:
            state = state_of(megabytes)
            rounds = [one_round(state, Path(tmp)) for _ in range(args.repeats)]
            gigabytes = rounds[0]["gigabytes"]
            per_gb = {
                k: statistics.median(r[k] for r in rounds) / gigabytes for k in rounds[0] if k != "gigabytes"
            }
            table.add_row(
                f"{gigabytes * 1000:.0f} MB",
                f"{per_gb['save']:.3f}",
                f"{per_gb['fsync']:.3f}",
                f"{per_gb['checksum']:.3f}",
                f"{per_gb['verify']:.3f}",
                f"+{per_gb['fsync'] / per_gb['save']:.0%}",
                f"+{per_gb['checksum'] / per_gb['save']:.0%}",
            )
            del state
    Console().print(table)


if __name__ == "__main__":
    main()
