"""``vigsp config``: show a resolved run config, list the configs, or document every key."""

from __future__ import annotations

import argparse
import json
from typing import Any

from pydantic_core import PydanticUndefined

from vigsp.config.deepspeed_config import global_batch_size, scaled_lr, to_deepspeed_config
from vigsp.config.loading import config_dirs, list_configs, load_config
from vigsp.config.messages import describe_field, iter_fields
from vigsp.config.serialize import resolved_yaml
from vigsp.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser(
        "show", help="print the resolved config: base files and overrides applied, defaults filled in"
    )
    show.add_argument("config", help="a config file, or a name under configs/ such as imagenet100/vig_ti")
    show.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=1e-3"
    )
    show.add_argument(
        "--deepspeed", action="store_true", help="print the DeepSpeed config dict (JSON) instead"
    )
    show.add_argument(
        "--world-size",
        type=int,
        metavar="N",
        help="data-parallel ranks for batch size and lr scaling (default: from the launch section)",
    )
    actions.add_parser("list", help="list the configs under configs/")
    actions.add_parser("keys", help="list every config key with its type, default and meaning")


def _show(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.overrides)
    world_size = args.world_size if args.world_size is not None else cfg.launch.world_size
    if world_size < 1:
        raise UserError(f"--world-size must be at least 1, got {world_size}")
    if args.deepspeed:
        print(json.dumps(to_deepspeed_config(cfg, world_size), indent=2))
        return
    print(resolved_yaml(cfg), end="")
    print(
        f"# with {world_size} rank(s): global batch {global_batch_size(cfg, world_size)}, "
        f"peak lr {scaled_lr(cfg, world_size):.6g}"
    )


def _list() -> None:
    directories = config_dirs()
    if not directories:
        raise UserError(
            "no configs/ directory found here; set VIGSP_CONFIG_DIR to the directory holding them"
        )
    for directory in directories:
        print(f"{directory}:")
        for name in list_configs(directory):
            print(f"  {name.removesuffix('.yaml')}")


def _default_text(default: Any) -> str:
    if default is PydanticUndefined:
        return "required"
    return f"default {json.dumps(default, default=str)}"


def _keys() -> None:
    for key, field, is_section in iter_fields():
        if is_section:
            print(f"\n{key}:" + (f"  {field.description}" if field.description else ""))
            continue
        default = field.default_factory() if field.default_factory is not None else field.default  # type: ignore[call-arg]
        about = f" - {field.description}" if field.description else ""
        print(f"  {key}: {describe_field(field)}; {_default_text(default)}{about}")


def run(args: argparse.Namespace) -> int:
    if args.action == "show":
        _show(args)
    elif args.action == "list":
        _list()
    else:
        _keys()
    return 0
