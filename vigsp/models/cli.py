"""``vigsp models``: a table of the registered models with parameters, FLOPs, nodes and input size."""

from __future__ import annotations

import argparse
import fnmatch

from vigsp.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "patterns",
        nargs="*",
        metavar="PATTERN",
        help="only models matching these shell patterns, e.g. '*tiny*'",
    )
    parser.add_argument(
        "--no-flops", action="store_true", help="skip counting FLOPs (each count runs one forward pass)"
    )
    parser.add_argument("--num-classes", type=int, default=None, help="count with this many classes")


def run(args: argparse.Namespace) -> int:
    # Imported here so that `vigsp --help` does not pay for importing torch.
    from rich.console import Console
    from rich.table import Table

    from vigsp.models.registry import REGISTRY, create_model
    from vigsp.models.summary import count_parameters, describe_nodes, flops_per_image

    names = [n for n in REGISTRY if not args.patterns or any(fnmatch.fnmatch(n, p) for p in args.patterns)]
    if not names:
        raise UserError(
            f"no registered model matches {' '.join(args.patterns)}; models: {', '.join(REGISTRY)}"
        )
    if args.num_classes is not None and args.num_classes < 1:
        raise UserError(f"--num-classes must be at least 1, got {args.num_classes}")

    table = Table(title="Registered models (vigsp.models.create_model)", title_justify="left")
    table.add_column("name", style="bold", no_wrap=True)
    table.add_column("nodes from", no_wrap=True)
    table.add_column("params", justify="right", no_wrap=True)
    table.add_column("GFLOPs", justify="right", no_wrap=True)
    table.add_column("nodes", justify="right", no_wrap=True)
    table.add_column("input", justify="right", no_wrap=True)
    for name in names:
        overrides = {} if args.num_classes is None else {"num_classes": args.num_classes}
        model = create_model(name, **overrides)
        flops = "-" if args.no_flops else f"{flops_per_image(model) / 1e9:.2f}"
        table.add_row(
            name,
            model.superpixel_method if model.needs_superpixels else "patches",
            f"{count_parameters(model) / 1e6:.2f}M",
            flops,
            describe_nodes(model),
            f"{model.img_size}x{model.img_size}",
        )
    console = Console()
    console.print(table)
    console.print(
        "GFLOPs per image: torch.utils.flop_counter (matmul + conv, 2 per multiply-add; the ViG paper counts "
        "multiply-adds, so its 1.3 G for ViG-Ti is ~2.6 here). Superpixel models: nodes = "
        "requested superpixels (padded count); GFLOPs counted at exactly that many nodes."
    )
    return 0
