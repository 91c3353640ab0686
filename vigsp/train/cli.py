"""``vigsp train CONFIG [key=value ...]``: train or resume one run in this process (one rank).

For several ranks on one machine: ``torchrun --nproc-per-node N -m vigsp.train.cli CONFIG``;
on Slurm: ``vigsp submit``. Exits 0 when training is done, 75 (REQUEUE_EXIT_CODE) when a stop
signal ended it after a checkpoint: run the same command again to continue.
"""

from __future__ import annotations

import argparse
import sys

from vigsp.train.outcome import REQUEUE_EXIT_CODE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="config name under configs/ (quickstart) or a YAML path")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=1e-3"
    )
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else the embedded ./mlruns.db)",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="auto|never|PATH",
        help="shorthand for checkpoint.resume=... (default auto: continue the run's latest checkpoint)",
    )


def run(args: argparse.Namespace) -> int:
    from vigsp.train.api import run_training

    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append(f"checkpoint.resume={args.resume}")
    outcome = run_training(args.config, overrides, tracking_uri=args.tracking_uri)
    if outcome.status == "stopped":
        print(f"stopped at step {outcome.global_step}; checkpoint {outcome.checkpoint}", file=sys.stderr)
        return REQUEUE_EXIT_CODE
    top1 = outcome.metrics.get("val_top1")
    summary = f", val top-1 {top1:.2f}%" if top1 is not None else ""
    print(f"finished: {outcome.global_step} steps{summary}; run directory {outcome.run_dir}", file=sys.stderr)
    return 0


def main() -> int:
    from vigsp.cli import main as vigsp_main

    return vigsp_main(["train", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
