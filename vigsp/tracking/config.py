"""The ``tracking:`` section of a training config: where the MLflow runs go."""

from __future__ import annotations

from pydantic import Field

from vigsp.config.section import Section

__all__ = ["TrackingConfig"]


class TrackingConfig(Section):
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; null = $MLFLOW_TRACKING_URI, else the embedded sqlite store "
        "./mlruns.db in the working directory",
    )
    experiment_name: str = Field("vigsp", min_length=1, description="MLflow experiment")
