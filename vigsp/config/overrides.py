"""Command-line overrides ``a.b.c=value`` and the dict merging shared with ``base:`` includes.

Values are typed like YAML scalars (``1e-3`` float, ``true`` bool, ``[1,2]`` list, ``null``),
using the same YAML 1.2 rules as config files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from vigsp.config.yaml_io import parse_yaml_scalar

__all__ = ["Override", "OverrideError", "deep_merge", "parse_override", "parse_overrides", "set_key"]

_DOTTED_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*(?:\.[A-Za-z_][A-Za-z0-9_-]*)*$")
_EXAMPLE = "e.g. optim.lr=1e-3 or data.batch_size=64"


class OverrideError(ValueError):
    """An override that cannot be parsed or applied; the message is for the user."""


@dataclass(frozen=True)
class Override:
    text: str  # as typed, for messages
    key: str
    value: Any


def parse_override(text: str) -> Override:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        if text.startswith("-"):
            raise OverrideError(f"{text!r} is not an override; options go before the config file")
        raise OverrideError(
            f"override {text!r} has no '=': write KEY=VALUE with no spaces around '=', {_EXAMPLE}"
        )
    if not key:
        raise OverrideError(
            f"override {text!r} has no key before '=': write KEY=VALUE with no spaces around '=', {_EXAMPLE}"
        )
    if not _DOTTED_KEY.match(key):
        raise OverrideError(f"override {text!r}: {key!r} is not a dotted key like optim.lr")
    if not raw.strip():
        raise OverrideError(
            f"override {text!r} has no value after '=': write {key}=null to unset it, or {key}='' for an "
            "empty string (no spaces around '=')"
        )
    try:
        value = parse_yaml_scalar(raw)
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err)
        raise OverrideError(
            f"override {text!r}: the value is not valid YAML ({problem}); quote strings with special "
            "characters, e.g. key='a: b'"
        ) from None
    return Override(text=text, key=key, value=value)


def flatten(tree: Mapping[str, Any], prefix: str = "", *, empty_as_leaf: bool = False) -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": {}}`` -> ``{"a.b": 1}``: lists and scalars are leaves, and an empty
    mapping reads like an absent key, or with ``empty_as_leaf`` is kept as ``{"c": {}}``."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and (value or not empty_as_leaf):
            flat.update(flatten(value, f"{dotted}.", empty_as_leaf=empty_as_leaf))
        else:
            flat[dotted] = value
    return flat


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: mappings merge key by key, anything else in ``update`` replaces."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def set_key(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key in a nested dict, creating sections (also over a ``null`` section)."""
    parts = key.split(".")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif isinstance(child, dict):
            child = node[part] = dict(child)  # copy: the tree may share sub-dicts with a base layer
        else:
            section = ".".join(parts[: depth + 1])
            raise OverrideError(f"cannot set {key}: {section} is a value ({child!r}), not a section")
        node = child
    leaf = parts[-1]
    if isinstance(value, Mapping) and isinstance(node.get(leaf), Mapping):
        node[leaf] = deep_merge(node[leaf], value)
    else:
        node[leaf] = value


def parse_overrides(texts: Iterable[str]) -> list[Override]:
    """Parse all overrides, reporting every bad one at once."""
    parsed, problems = [], []
    for text in texts:
        try:
            parsed.append(parse_override(text))
        except OverrideError as err:
            problems.append(str(err))
    if problems:
        raise OverrideError("\n".join(problems))
    return parsed
