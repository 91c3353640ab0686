"""``vigsp data``: prepare the embedded dataset and check image folders before training on them.

vigsp data prepare fashion-mnist [--source DIR] [--out DIR] [--size N]
vigsp data check PATH [--write-exclude FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

DATASETS = ("fashion-mnist",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    prepare = actions.add_parser(
        "prepare",
        help="write a dataset as a JPEG class-folder tree (train/<class>/, val/<class>/)",
        description="Write a dataset as a JPEG class-folder tree. Fashion-MNIST comes from the idx files "
        "of Debian's dataset-fashion-mnist package (or --source); val is the official 10k test split. "
        "A completed output (it has a .vigsp-prepared.json marker) is left alone.",
    )
    prepare.add_argument("dataset", choices=DATASETS)
    prepare.add_argument(
        "--source",
        type=Path,
        default=None,
        help="folder with the four idx(.gz) files (default: /usr/share/datasets/fashion-mnist)",
    )
    prepare.add_argument(
        "--out",
        type=Path,
        default=Path("data/fashion_mnist"),
        help="output folder (default data/fashion_mnist)",
    )
    prepare.add_argument("--size", type=int, default=28, help="image side in pixels; 28 = original (default)")
    prepare.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    prepare.add_argument("--workers", type=int, default=None, help="processes (default: cores, at most 8)")

    check = actions.add_parser(
        "check",
        help="decode every image and report the ones that would break or spoil training",
        description="Decode every image under PATH with several processes (Pillow for the details, DALI's "
        "decoder for the verdict) and report corrupt, truncated, undecodable, non-JPEG-named-.jpg, CMYK, "
        "greyscale and tiny images with what to do. Exit status 1 if any file would stop training.",
    )
    check.add_argument("path", type=Path, help="a dataset folder (searched recursively) or one image")
    check.add_argument(
        "--min-size", type=int, default=16, help="shorter sides below this are 'tiny' (default 16)"
    )
    check.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    check.add_argument(
        "--no-dali", action="store_true", help="judge with Pillow only (faster, misses DALI-only failures)"
    )
    check.add_argument(
        "--write-exclude",
        type=Path,
        metavar="FILE",
        help="write the files that would stop training to FILE, for data.exclude_list",
    )
    check.add_argument("--max-listed", type=int, default=50, help="list at most this many files per kind")
    check.add_argument("--quiet", action="store_true", help="no progress bar")


def _prepare(args: argparse.Namespace) -> int:
    from vigsp.data.fashion_mnist import DEFAULT_SOURCE, prepare_fashion_mnist

    result = prepare_fashion_mnist(
        source=args.source or DEFAULT_SOURCE,
        out=args.out,
        size=args.size,
        quality=args.quality,
        workers=args.workers,
    )
    counts = ", ".join(f"{split} {count}" for split, count in result.counts.items())
    state = "already complete, nothing to do" if result.skipped else "written"
    print(f"{result.out}: Fashion-MNIST ({counts} images) {state}; classes in {result.out / 'classes.txt'}")
    print(f"use it with: data.train_dir={result.out / 'train'} data.val_dir={result.out / 'val'}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from vigsp.data.check import check_images, format_report, write_exclude_list

    result = check_images(
        args.path,
        min_size=args.min_size,
        workers=args.workers,
        use_dali=not args.no_dali,
        progress=not args.quiet,
    )
    print(format_report(result, max_per_kind=args.max_listed))
    if args.write_exclude is not None:
        count = write_exclude_list(result.issues, args.write_exclude)
        print(f"wrote {count} path(s) to {args.write_exclude}; set data.exclude_list to it to skip them")
    return 1 if result.errors else 0


def run(args: argparse.Namespace) -> int:
    return _prepare(args) if args.action == "prepare" else _check(args)
