"""YAML reading and writing with YAML 1.2 scalar typing and duplicate-key detection.

PyYAML implements YAML 1.1, whose implicit typing surprises people writing configs:
``1e-3`` is a *string* (a float needs a dot), ``no``/``off`` are booleans and
``1:30:00`` is the integer 5400 (base-60), which would silently break a Slurm time
limit. We resolve plain scalars the YAML 1.2 core-schema way instead, for files and
for command-line overrides alike, and refuse duplicate keys that PyYAML would
silently collapse to the last one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import yaml

from vigsp.errors import UserError

__all__ = ["dump_yaml", "load_yaml_file", "parse_yaml_scalar"]

# (tag, pattern, possible first characters; "" stands for an empty scalar)
_CORE_RESOLVERS: list[tuple[str, re.Pattern[str], list[str]]] = [
    ("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]),
    ("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")),
    ("tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")),
    (
        "tag:yaml.org,2002:float",
        re.compile(
            r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
            r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
        ),
        list("-+.0123456789"),
    ),
]


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 core-schema scalars and an error on duplicate keys."""

    # Our own table, so PyYAML's YAML 1.1 resolvers are not inherited.
    yaml_implicit_resolvers: ClassVar[dict[str, list[tuple[str, re.Pattern[str]]]]] = {}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found duplicate key {key!r} (first defined on line {seen[key].line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


for _tag, _regexp, _first in _CORE_RESOLVERS:
    _Loader.add_implicit_resolver(_tag, _regexp, _first)


def _int_core(loader: _Loader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    assert isinstance(text, str)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text)  # decimal only: YAML 1.1 octal "0755" and "1_000" are not numbers in 1.2


_Loader.add_constructor("tag:yaml.org,2002:int", _int_core)


def _describe_yaml_error(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err)
    context = getattr(err, "context", None)
    return f"{where}{problem}" + (f" ({context})" if context else "")


def load_yaml_file(path: Path) -> dict[str, Any]:
    """Read a config file that must hold a mapping at the top level (an empty file is ``{}``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"cannot read config file {path}: {err.strerror or err}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML: {_describe_yaml_error(err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"{path} must hold a mapping of sections (run:, model:, data:, ...) at the top level, "
            f"not a {type(data).__name__}"
        )
    return data


def parse_yaml_scalar(text: str) -> Any:
    """Type one command-line value the way it would be typed in a config file.

    Raises ``yaml.YAMLError`` for malformed flow values such as ``[1,2``.
    """
    return yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader


class _Dumper(yaml.SafeDumper):
    """Quotes every string that a YAML 1.1 *or* a YAML 1.2 reader would take for another type.

    PyYAML alone would write the string ``"1e5"`` bare (it is a string in 1.1), and our
    loader would read it back as a float; knowing both rule sets keeps the round trip exact.
    """


for _tag, _regexp, _first in _CORE_RESOLVERS:
    _Dumper.add_implicit_resolver(_tag, _regexp, _first)


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)
