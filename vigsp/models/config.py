"""The ``model:`` section of a training config. The whole section shapes a checkpoint (schema.py marks it)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from vigsp.config.section import Section

__all__ = ["ModelConfig"]


class ModelConfig(Section):
    name: str = Field(description="registered model name (see `vigsp models`)")
    num_classes: int = Field(ge=2, description="classifier outputs")
    drop_path_rate: float = Field(0.0, ge=0.0, lt=1.0, description="stochastic depth rate of the last block")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments for vigsp.models.create_model(name, ...)"
    )
