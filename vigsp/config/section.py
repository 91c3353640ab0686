"""The base of every config section, and the mark of a setting that shapes a checkpoint.

Sections live beside the code that reads them (``vigsp.data.config``, ``vigsp.train.config``,
...); ``vigsp.config.schema`` assembles them into one ``TrainConfig``. This module imports
pydantic only, so any owner can use it without an import cycle.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["SHAPES_CHECKPOINT", "Section", "shapes_checkpoint"]

# json_schema_extra of a field whose change makes a checkpoint unusable (tensor shapes, file
# layout); vigsp.config.compat collects the marked fields into INCOMPATIBLE_KEYS.
SHAPES_CHECKPOINT: dict[str, Any] = {"shapes_checkpoint": True}


class Section(BaseModel):
    """Unknown keys are errors (a typo such as ``optim.lrr`` fails at load time); defaults are validated."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


def shapes_checkpoint(field_info: Any) -> bool:
    """Whether a pydantic FieldInfo carries the SHAPES_CHECKPOINT mark."""
    extra = field_info.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("shapes_checkpoint"))
