"""The ``vigsp`` command line: one sub-command per module, imported lazily.

Each sub-command module exposes ``add_arguments(parser)`` and ``run(args) -> int``.
Importing only the chosen module keeps ``vigsp --help`` instant even though the
training stack (torch, DALI, DeepSpeed, MLflow) takes seconds to import.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from vigsp.errors import UserError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("vigsp.train.cli", "train or resume a run (one rank; torchrun or `vigsp submit` for more)"),
    "data": ("vigsp.data.cli", "prepare and check datasets"),
    "models": ("vigsp.models.cli", "list registered models with params and FLOPs"),
    "viz": ("vigsp.viz", "render images with their superpixels and graph to a PNG"),
    "compare": ("vigsp.compare", "compare MLflow runs in a table and a curves PNG"),
    "config": ("vigsp.config.cli", "show a resolved run config, list configs, document keys"),
    "eval": ("vigsp.inference.eval_cli", "evaluate a trained model: top-1/top-5, per-class table, confusion"),
    "predict": ("vigsp.inference.predict_cli", "classify images with a trained model (no DALI needed)"),
    "submit": ("vigsp.launch.submit", "submit training (or a sweep) to Slurm through submitit"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vigsp", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def parse_command_args(parser: argparse.ArgumentParser, args: Sequence[str]) -> argparse.Namespace:
    """Overrides (KEY=VALUE positionals) may come after flags: ``vigsp submit CFG --local run.epochs=1``.
    Commands with sub-commands of their own (``data prepare``) cannot be parsed intermixed."""
    try:
        return parser.parse_intermixed_args(args)
    except TypeError:
        return parser.parse_args(args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        top.parse_args(argv)  # prints help or a clear "invalid choice" error
        return 2
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"vigsp {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parse_command_args(parser, rest)
    try:
        return int(module.run(args) or 0)
    except UserError as err:
        print(f"vigsp {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
