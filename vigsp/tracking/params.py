"""Turn a nested training config into MLflow params: flat dotted keys, bounded string values."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

from vigsp.config.overrides import flatten as _flatten

# MLflow 3 accepts 6000 characters, but servers before 2.x-late reject more than 500; the full
# config is also stored as an artifact, so a truncated param loses nothing.
PARAM_VALUE_LIMIT = 500
TRUNCATION_MARK = "...[truncated]"
KEY_LIMIT = 250  # MLflow's limit on param, tag and metric keys
PARAMS_PER_BATCH = 100  # MLflow's limit on params (and on tags) in one log_batch call
METRICS_PER_BATCH = 1000  # MLflow's limit on metrics in one log_batch call

T = TypeVar("T")


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for MLflow params: an empty mapping stays a param of its own (``{}``)."""
    return _flatten(config, prefix, empty_as_leaf=True)


def to_param_value(value: Any) -> str:
    """A string MLflow will accept: JSON for containers, ``str`` otherwise, at most the limit."""
    if isinstance(value, (Mapping, list, tuple)):
        text = json.dumps(value, default=str, sort_keys=True)
    else:
        text = str(value)
    if len(text) > PARAM_VALUE_LIMIT:
        text = text[: PARAM_VALUE_LIMIT - len(TRUNCATION_MARK)] + TRUNCATION_MARK
    return text


def config_params(config: Mapping[str, Any]) -> dict[str, str]:
    """Flattened, stringified, bounded params; over-long keys are cut (they must stay unique)."""
    params: dict[str, str] = {}
    for key, value in flatten(config).items():
        params[_bounded_key(key)] = to_param_value(value)
    return params


def _bounded_key(key: str) -> str:
    # A stable digest (not hash(): it changes per process) keeps cut keys equal across resumes.
    if len(key) <= KEY_LIMIT:
        return key
    return key[: KEY_LIMIT - 9] + "~" + hashlib.sha1(key.encode()).hexdigest()[:8]


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
