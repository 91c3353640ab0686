"""Turn pydantic validation errors into one readable line per problem.

Each line names the full dotted key, what was given, what is expected and where the value
came from (file or command-line override); unknown keys get the nearest valid key. The
schema itself is the source of truth for valid keys and expected types.
"""

from __future__ import annotations

import difflib
import inspect
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from vigsp.config.schema import TrainConfig

__all__ = [
    "describe_field",
    "describe_type",
    "format_validation_error",
    "iter_fields",
    "schema_keys",
    "suggest_key",
]

SourceLookup = Callable[[str], "str | None"]


def _is_model(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, BaseModel)


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if get_origin(annotation) in (Union, types.UnionType):
        return get_args(annotation)
    return (annotation,)


def _section_of(annotation: Any) -> type[BaseModel] | None:
    """The config section class behind ``Section`` or ``Section | None``, if any."""
    for member in _union_members(annotation):
        if _is_model(member):
            return member
    return None


def iter_fields(
    model: type[BaseModel] = TrainConfig, prefix: str = ""
) -> Iterator[tuple[str, FieldInfo, bool]]:
    """Each field as (dotted key, FieldInfo, is-a-section): a section's own keys, then its sub-sections."""
    fields = list(model.model_fields.items())
    for name, field in fields:
        if _section_of(field.annotation) is None:
            yield f"{prefix}{name}", field, False
    for name, field in fields:
        section = _section_of(field.annotation)
        if section is not None:
            yield f"{prefix}{name}", field, True
            yield from iter_fields(section, f"{prefix}{name}.")


def schema_keys(model: type[BaseModel] = TrainConfig) -> list[str]:
    """Every valid dotted key, sections included (``optim``, ``optim.lr``, ...)."""
    return [key for key, _, _ in iter_fields(model)]


def _children(parent: str, model: type[BaseModel] = TrainConfig) -> list[str] | None:
    if not parent:
        return list(model.model_fields)
    fields = {key: field for key, field, _ in iter_fields(model)}
    section = _section_of(fields[parent].annotation) if parent in fields else None
    return list(section.model_fields) if section is not None else None


def suggest_key(path: str, model: type[BaseModel] = TrainConfig) -> str | None:
    """The valid key nearest to an unknown dotted key: a similar sibling, else the same name elsewhere."""
    parent, _, leaf = path.rpartition(".")
    siblings = _children(parent, model) or []
    # A shortened name (gpus -> gpus_per_node) is closer than any spelling similarity says.
    close = [name for name in siblings if len(leaf) >= 3 and leaf in name]
    close = close or difflib.get_close_matches(leaf, siblings, n=1, cutoff=0.6)
    if close:
        return f"{parent}.{close[0]}" if parent else close[0]
    every = schema_keys(model)
    misplaced = [key for key in every if key.rpartition(".")[2] == leaf]  # e.g. data.lr -> optim.lr
    if misplaced:
        return misplaced[0]
    close = difflib.get_close_matches(path, every, n=1, cutoff=0.75)
    return close[0] if close else None


def _unannotate(annotation: Any) -> tuple[Any, list[Any]]:
    if get_origin(annotation) is Annotated:
        base, *extras = get_args(annotation)
        metadata: list[Any] = []
        for extra in extras:
            metadata.extend(extra.metadata if isinstance(extra, FieldInfo) else [extra])
        return base, metadata
    return annotation, []


def _resolve(loc: tuple[str | int, ...]) -> tuple[str, Any, list[Any], FieldInfo | None]:
    """Follow a pydantic error location through the schema.

    Returns the dotted key, its annotation, its constraints and its FieldInfo. Location parts
    that are not keys (pydantic's union-member tags) end the walk and are dropped.
    """
    annotation: Any = TrainConfig
    metadata: list[Any] = []
    field: FieldInfo | None = None
    key = ""
    for part in loc:
        section = _section_of(annotation)
        origin = get_origin(annotation)
        if isinstance(part, str) and section is not None and part in section.model_fields:
            field = section.model_fields[part]
            annotation, metadata = field.annotation, list(field.metadata)
            key = f"{key}.{part}" if key else part
        elif isinstance(part, int) and origin in (list, tuple):
            args = get_args(annotation)
            item = args[0] if origin is list or args[-1] is Ellipsis else args[min(part, len(args) - 1)]
            annotation, metadata = _unannotate(item)
            key = f"{key}[{part}]"
        elif isinstance(part, str) and origin is dict:
            annotation, metadata = get_args(annotation)[1], []
            key = f"{key}.{part}"
        else:
            break
    return key, annotation, metadata, field


_NOUNS = {bool: "booleans", int: "integers", float: "numbers", str: "strings", Path: "paths"}
_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path"}


def _show(value: Any, limit: int = 60) -> str:
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    for kind, word in ((bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string")):
        if isinstance(value, kind):
            return word
    return {list: "a list", dict: "a mapping"}.get(type(value), type(value).__name__)


def describe_type(annotation: Any) -> str:
    """Plain-words description of a schema annotation, e.g. ``a number or null``."""
    annotation, _ = _unannotate(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        words = [describe_type(arg) for arg in args if arg is not type(None)]
        return " or ".join(words + (["null"] if type(None) in args else []))
    if origin is Literal:
        return "one of " + ", ".join(_show(arg) for arg in args)
    if annotation in _WORDS:
        return _WORDS[annotation]
    if origin in (list, tuple):
        item, _ = _unannotate(args[0]) if args else (Any, [])
        noun = _NOUNS.get(item, "values")
        fixed = origin is tuple and args and args[-1] is not Ellipsis
        return f"a list of {len(args)} {noun}" if fixed else f"a list of {noun}"
    if origin is dict:
        return "a mapping"
    if _is_model(annotation):
        return "a mapping with keys " + ", ".join(annotation.model_fields)
    return "any value" if annotation is Any else getattr(annotation, "__name__", str(annotation))


def _describe_constraints(metadata: list[Any]) -> str:
    words = []
    for item in metadata:
        if isinstance(item, annotated_types.Gt):
            words.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Ge):
            words.append(f">= {item.ge}")
        elif isinstance(item, annotated_types.Lt):
            words.append(f"< {item.lt}")
        elif isinstance(item, annotated_types.Le):
            words.append(f"<= {item.le}")
        elif isinstance(item, annotated_types.MinLen):
            words.append(f"of length >= {item.min_length}")
    return " and ".join(words)


def _expected(annotation: Any, metadata: list[Any]) -> str:
    """The type, its constraints, then "or null": ``an integer >= 1, or null``."""
    annotation, _ = _unannotate(annotation)
    members = _union_members(annotation)
    core = [member for member in members if member is not type(None)]
    text = " or ".join(describe_type(member) for member in core) if core else "null"
    constraints = _describe_constraints(metadata)
    if constraints:
        text += f" {constraints}"
    return f"{text}, or null" if core and len(core) < len(members) else text


def describe_field(field: FieldInfo) -> str:
    """What a field accepts, constraints included, e.g. ``an integer >= 1``."""
    return _expected(field.annotation, list(field.metadata))


def _custom_message(error: dict[str, Any]) -> str:
    return str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")


def format_validation_error(err: ValidationError, source_of: SourceLookup = lambda key: None) -> list[str]:
    """One line per problem, in the order pydantic found them."""
    lines: list[str] = []
    grouped: dict[str, list[dict[str, Any]]] = {}
    for error in err.errors():
        loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            key = ".".join(str(part) if isinstance(part, str) else f"[{part}]" for part in loc)
            key = key.replace(".[", "[")
            lines.append(_unknown_key_line(key, source_of(key)))
        elif not loc:  # cross-section checks in TrainConfig; their messages name the keys
            lines.extend(_custom_message(error).splitlines())
        else:
            grouped.setdefault(_resolve(loc)[0], []).append(error)
    for key, errors in grouped.items():
        lines.append(_field_line(key, errors, source_of(key)))
    return lines


def _where(source: str | None) -> str:
    return f" [from {source}]" if source else ""


def _unknown_key_line(key: str, source: str | None) -> str:
    line = f"{key}: unknown key{_where(source)}"
    suggestion = suggest_key(key)
    if suggestion:
        return f"{line}; did you mean {suggestion!r}?"
    parent = key.rpartition(".")[0]
    valid = _children(parent)
    if valid:
        return f"{line}; valid keys {'in ' + parent if parent else 'at the top level'}: {', '.join(valid)}"
    return line


def _field_line(key: str, errors: list[dict[str, Any]], source: str | None) -> str:
    first = errors[0]
    _, annotation, metadata, field = _resolve(tuple(first["loc"]))
    expected = _expected(annotation, metadata)
    if first["type"] == "missing":
        about = f"; {field.description}" if field is not None and field.description else ""
        return f"{key}: required but missing (expected {expected}{about}){_where(source)}"
    value = first["input"]
    custom = [error for error in errors if error["type"] in ("value_error", "assertion_error")]
    if custom:
        return f"{key}: {_custom_message(custom[0])}{_where(source)}"
    got = _show(value) if value is None else f"{_show(value)} ({_kind(value)})"
    return f"{key}: expected {expected}, got {got}{_where(source)}"
