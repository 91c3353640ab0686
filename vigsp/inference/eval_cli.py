"""``vigsp eval MODEL [--data DIR | --list FILE] [--weights final|best|latest|ema]``: top-1/top-5,
a per-class table and a confusion matrix of a trained model on any ImageFolder or file list.

MODEL is a run directory, a checkpoint tag, an exported model folder or an MLflow model URI. The
images go through the run's own evaluation pipeline (DALI, the resize/crop and superpixel settings
read from the run's config), sharded over the ranks as in training: one process here, or
``torchrun --nproc-per-node N -m vigsp.cli eval ...`` (any launcher that sets RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT). Rank 0 writes the report into ``RUN_DIR/eval/<name>-<weights>/``
(or ``--out``) and logs it to the run's MLflow run (``--new-run``: a new run linked to it).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from vigsp.errors import UserError

if TYPE_CHECKING:
    from vigsp.config.schema import TrainConfig
    from vigsp.data.config import DataConfig
    from vigsp.data.folders import ImageIndex
    from vigsp.inference.evaluation import EvalSummary, Predictions
    from vigsp.inference.source import ModelSource
    from vigsp.train.distributed import DistEnv

log = logging.getLogger("vigsp.eval")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", metavar="MODEL", help="run directory, checkpoint tag, exported model or MLflow URI"
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="an ImageFolder (class sub-folders) to evaluate"
    )
    parser.add_argument(
        "--list", type=Path, default=None, help="a file list ('path [label]' lines; paths relative to --data)"
    )
    parser.add_argument(
        "--name", default=None, help="the dataset's name in metric keys (default: from the folder)"
    )
    parser.add_argument("--weights", default="final", choices=("final", "best", "latest", "ema"))
    parser.add_argument("--batch-size", type=int, default=None, help="images per rank and batch")
    parser.add_argument("--topk", type=int, default=5, help="classes kept per image in predictions.csv")
    parser.add_argument("--out", type=Path, default=None, help="report folder")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the run's own)")
    parser.add_argument(
        "--new-run", action="store_true", help="log into a new MLflow run linked to the model's"
    )
    parser.add_argument("--no-mlflow", action="store_true", help="write the report files only")
    parser.add_argument(
        "--log-model",
        action="store_true",
        help="also log the evaluated weights as an MLflow pyfunc model (runs:/ID/model_<weights>)",
    )
    parser.add_argument(
        "--register", metavar="NAME", default=None, help="register that model as a new version of NAME"
    )


def _dataset(args: argparse.Namespace, cfg: TrainConfig) -> tuple[DataConfig, str]:
    """The run's data config pointed at what to evaluate, and the dataset's name."""
    updates: dict[str, object] = {}
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, not {args.batch_size}")
        updates["batch_size"] = args.batch_size
    if args.list is not None:
        updates.update(val_list=args.list.resolve(), val_dir=(args.data or args.list.parent).resolve())
        name = args.list.stem
    elif args.data is not None:
        updates.update(val_dir=args.data.resolve(), val_list=None)
        name = args.data.resolve().name
    else:
        name = "val"
    updates["exclude_list"] = None if (args.data or args.list) else cfg.data.exclude_list
    return cfg.data.model_copy(update=updates), args.name or name


def _init_ranks() -> DistEnv:
    import torch

    from vigsp.train.distributed import cpu_threads_per_rank, read_env

    env = read_env()
    threads = cpu_threads_per_rank()
    if threads is not None and env.device.type == "cpu":
        torch.set_num_threads(threads)
    if env.world_size > 1:
        torch.distributed.init_process_group(env.backend)
    return env


def run(args: argparse.Namespace) -> int:
    import torch

    from vigsp.config.model_inputs import declared_inputs
    from vigsp.data.loader import EvalLoader
    from vigsp.inference.evaluation import gather_predictions, predict_batches, summarize
    from vigsp.inference.source import resolve_model
    from vigsp.train.logs import FORMAT

    if (args.log_model or args.register) and args.no_mlflow:
        raise UserError("--log-model and --register log to MLflow: drop --no-mlflow")

    env = _init_ranks()
    logging.basicConfig(
        level=logging.INFO if env.is_main else logging.WARNING,
        format=FORMAT.format(rank=env.rank),
        datefmt="%H:%M:%S",
    )
    try:
        source = resolve_model(args.model, args.weights)
        data, name = _dataset(args, source.cfg)
        inputs = declared_inputs(source.cfg)
        loader = EvalLoader(
            data,
            rank=env.rank,
            world_size=env.world_size,
            classes=source.classes,
            outputs=inputs.pipeline_outputs,
            device_id=env.dali_device_id,
        )
        log.info(
            "evaluating %s (%s weights) on %s: %d images over %d rank(s)",
            source.origin,
            source.kind,
            loader.index.root,
            len(loader.index),
            env.world_size,
        )
        model = source.build_model(env.device)
        local = predict_batches(
            model, loader, inputs.names, env.device, source.dtype, len(source.classes), args.topk
        )
        predictions = gather_predictions(local, env)
        if predictions is not None:
            _report(args, source, loader.index, predictions, name, summarize(predictions, source.classes))
    finally:
        if env.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


def _report(
    args: argparse.Namespace,
    source: ModelSource,
    index: ImageIndex,
    predictions: Predictions,
    name: str,
    summary: EvalSummary,
) -> None:
    from vigsp.inference.eval_tracking import DatasetInfo, log_evaluation
    from vigsp.inference.report import print_summary, write_report

    out = args.out or (source.run_dir or Path.cwd()) / "eval" / f"{name}-{source.kind}"
    dataset = DatasetInfo.of(index, name)
    info = {"dataset": name, "digest": dataset.digest, "weights": source.kind, "model": source.origin}
    files = write_report(out, summary, predictions, index, info)
    print_summary(summary, f"{name}: {source.origin} ({source.kind} weights)")
    print(f"report: {out}", file=sys.stderr)
    ref = source.mlflow_run
    if args.no_mlflow or ref is None:
        if ref is None and not args.no_mlflow:
            print("not logged to MLflow: the model is not linked to an MLflow run", file=sys.stderr)
        return
    from vigsp.tracking.store import resolve_tracking_uri

    uri = args.tracking_uri or ref.tracking_uri or resolve_tracking_uri(None)
    run_id = log_evaluation(ref, uri, summary, dataset, files, source.kind, new_run=args.new_run)
    print(f"logged to MLflow run {run_id} at {uri} (metrics eval/{name}/*)", file=sys.stderr)
    if args.log_model or args.register:
        from vigsp.inference.eval_tracking import log_evaluated_model

        into_training = not args.new_run
        model_uri = log_evaluated_model(
            source, uri, run_id, index, summary, dataset, args.register, into_training
        )
        print(f"MLflow model: {model_uri}", file=sys.stderr)
