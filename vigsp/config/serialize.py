"""Write a resolved config so that the run directory records exactly what ran."""

from __future__ import annotations

from vigsp.config.compat import config_hash
from vigsp.config.schema import TrainConfig
from vigsp.config.yaml_io import dump_yaml

__all__ = ["resolved_yaml"]


def resolved_yaml(cfg: TrainConfig) -> str:
    """The full config, every default filled in; ``load_config`` reads it back to an equal config."""
    header = (
        "# Resolved vigsp config: every default filled in, base files and overrides applied.\n"
        f"# config_hash: {config_hash(cfg)}  (model/data-shape settings a checkpoint depends on)\n"
    )
    return header + dump_yaml(cfg.model_dump(mode="json"))
