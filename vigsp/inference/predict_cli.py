"""``vigsp predict MODEL IMAGE|DIR ... [--topk 5] [--json] [--strict]``: class names with their
probabilities for each image, in batches, on the CPU, without DALI (the same code as the MLflow
model). MODEL is a run directory, a checkpoint tag, an exported model folder or an MLflow model
URI (``runs:/ID/model``, ``models:/NAME/VERSION``). A file that cannot be decoded is named and
skipped, and the others are still predicted; ``--strict`` makes it an error (exit 1) instead."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vigsp.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model", metavar="MODEL", help="run directory, checkpoint tag, exported model or MLflow URI"
    )
    parser.add_argument("images", nargs="+", type=Path, metavar="IMAGE|DIR", help="image files or folders")
    parser.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")
    parser.add_argument("--weights", default="final", choices=("final", "best", "latest", "ema"))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--strict", action="store_true", help="fail (exit 1) if any image cannot be decoded")


def image_files(paths: list[Path]) -> list[Path]:
    """Files as given, folders searched recursively for image files (sorted)."""
    from vigsp.data.folders import is_image_file

    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p.name))
        elif path.exists():
            found.append(path)
        else:
            raise UserError(f"{path} does not exist")
    if not found:
        raise UserError(f"no image files in {', '.join(map(str, paths))}")
    return found


def run(args: argparse.Namespace) -> int:
    from vigsp.inference.predictor import Predictor
    from vigsp.inference.source import resolve_model

    if args.topk < 1 or args.batch_size < 1:
        raise UserError("--topk and --batch-size must be at least 1")
    files = image_files(args.images)
    predictor = Predictor(resolve_model(args.model, args.weights), batch_size=args.batch_size)
    if args.strict:
        from vigsp.inference.preprocess import UnreadableImageError, decode

        bad = []
        for path in files:
            try:
                decode(path)
            except UnreadableImageError as err:
                bad.append(str(err))
        if bad:
            print("\n".join(["vigsp predict: error: cannot decode (--strict):", *bad]), file=sys.stderr)
            return 1
    predictions, failures = predictor.predict((str(p), p) for p in files)
    k = min(args.topk, len(predictor.classes))
    if args.json:
        out = {
            "model": predictor.source.origin,
            "predictions": [
                {
                    "file": p.name,
                    "top": [{"class": c, "probability": v} for c, v in p.top(predictor.classes, k)],
                }
                for p in predictions
            ],
            "failed": [{"file": f.name, "error": f.reason} for f in failures],
        }
        json.dump(out, sys.stdout, indent=1)
        print()
    else:
        for p in predictions:
            top = "  ".join(f"{c} {v:.4f}" for c, v in p.top(predictor.classes, k))
            print(f"{p.name}\t{top}")
    for failure in failures:
        print(f"vigsp predict: skipped {failure.reason}", file=sys.stderr)
    return 0
