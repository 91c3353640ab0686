"""Which settings make a checkpoint unusable, their hash, and the resume check.

A checkpoint holds weights, optimizer state and EMA shaped by the model and by the data
that sets tensor shapes (image size, class count, graph sizes). Resuming with any of those
changed would fail to load or, worse, load into a different experiment. Training-length,
learning-rate, logging and launch settings are deliberately left out: changing them on
resume (more epochs, another partition, a smaller lr) is legitimate.

DeepSpeed's ZeRO stage and bf16 change the checkpoint's file layout and optimizer state
(partitioned fp32 master weights), so they count as incompatible too.
"""

from __future__ import annotations

import hashlib
import json
import typing
from collections.abc import Mapping
from typing import Any

from vigsp.config.overrides import flatten
from vigsp.config.schema import TrainConfig
from vigsp.config.section import Section, shapes_checkpoint
from vigsp.errors import UserError

__all__ = ["INCOMPATIBLE_KEYS", "check_resume_compatible", "config_hash", "diff_incompatible", "flatten"]


def _section_type(annotation: Any) -> type[Section] | None:
    """The Section class a field holds, seeing through ``X | None``; None for plain values."""
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def _marked_keys(section: type[Section], prefix: str = "") -> list[str]:
    """Dotted keys of every field marked SHAPES_CHECKPOINT, walking nested sections."""
    keys = []
    for name, field_info in section.model_fields.items():
        if shapes_checkpoint(field_info):
            keys.append(prefix + name)
        elif (nested := _section_type(field_info.annotation)) is not None:
            keys.extend(_marked_keys(nested, f"{prefix}{name}."))
    return keys


# Dotted keys (or whole sections) that must match between a checkpoint and the config resuming
# it: derived from the SHAPES_CHECKPOINT marks in the sections, so the schema is the one source.
INCOMPATIBLE_KEYS: tuple[str, ...] = tuple(_marked_keys(TrainConfig))

ConfigLike = TrainConfig | Mapping[str, Any]


def _as_tree(config: ConfigLike) -> dict[str, Any]:
    """A JSON-shaped dict (paths as strings, tuples as lists) from a config or a saved config dict."""
    tree = config.model_dump(mode="json") if isinstance(config, TrainConfig) else dict(config)
    return json.loads(json.dumps(tree, default=str))


def incompatible_fields(config: ConfigLike) -> dict[str, Any]:
    """The checkpoint-shaping settings as a flat dict; a key under a null section reads as null."""
    flat = flatten(_as_tree(config))
    selected: dict[str, Any] = {}
    for wanted in INCOMPATIBLE_KEYS:
        matches = {key: value for key, value in flat.items() if key == wanted or key.startswith(f"{wanted}.")}
        selected.update(matches or {wanted: None})
    return selected


def config_hash(config: ConfigLike) -> str:
    """16 hex digits that change exactly when a checkpoint-shaping setting changes."""
    canonical = json.dumps(incompatible_fields(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _show(value: Any) -> str:
    return "null" if value is None else json.dumps(value)


def diff_incompatible(saved: ConfigLike, new: ConfigLike) -> list[str]:
    """One line per checkpoint-shaping key that differs: ``key: checkpoint has X, config has Y``."""
    old_fields, new_fields = incompatible_fields(saved), incompatible_fields(new)
    return [
        f"{key}: checkpoint has {_show(old_fields.get(key))}, config has {_show(new_fields.get(key))}"
        for key in sorted(old_fields.keys() | new_fields.keys())
        if old_fields.get(key) != new_fields.get(key)
    ]


def check_resume_compatible(saved: ConfigLike, new: ConfigLike, checkpoint: str) -> None:
    """Raise a UserError naming every differing key if ``new`` cannot resume ``checkpoint``."""
    differences = diff_incompatible(saved, new)
    if differences:
        listing = "\n".join(f"  - {line}" for line in differences)
        raise UserError(
            f"cannot resume from {checkpoint}: it was written with different settings that shape the "
            f"checkpoint:\n{listing}\n"
            "Change them back, or start a fresh run: pass run.name=NEW_NAME or checkpoint.resume=never."
        )
