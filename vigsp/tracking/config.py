"""The ``tracking:`` section of a training config: where the MLflow runs go."""

from __future__ import annotations

from pydantic import Field, model_validator

from vigsp.config.section import Section

__all__ = ["TrackingConfig"]


class TrackingConfig(Section):
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking URI; null = $MLFLOW_TRACKING_URI, else the embedded sqlite store "
        "./mlruns.db in the working directory",
    )
    experiment_name: str = Field("vigsp", min_length=1, description="MLflow experiment")
    log_model: bool = Field(
        True,
        description="at the end of training, log the final weights as an MLflow pyfunc model "
        "(runs:/ID/model; also kept in RUN_DIR/mlflow_model): images in, class probabilities out, "
        "served without DALI",
    )
    register_model: str | None = Field(
        None,
        min_length=1,
        description="also register that model in the MLflow Model Registry under this name: a new "
        "version per run, tagged with the run's final metrics (needs tracking.log_model)",
    )

    @model_validator(mode="after")
    def _registering_needs_the_model(self) -> TrackingConfig:
        if self.register_model is not None and not self.log_model:
            raise ValueError(
                "tracking.register_model needs tracking.log_model=true (the registered version is the "
                "logged model); set log_model=true or register_model=null"
            )
        return self
