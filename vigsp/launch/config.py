"""The ``launch:`` section of a training config: Slurm resources for `vigsp submit`, and Slurm time limits."""

from __future__ import annotations

import math
import re

from pydantic import Field, field_validator, model_validator

from vigsp.config.section import Section

__all__ = ["LaunchConfig", "slurm_time_to_minutes"]


# Slurm --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_SLURM_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def slurm_time_to_minutes(value: int | str) -> int:
    """Minutes in a Slurm time limit (rounded up), e.g. ``"1-12:00:00"`` -> 2160."""
    if isinstance(value, int):
        if value < 1:
            raise ValueError("a time limit in minutes must be at least 1")
        return value
    match = _SLURM_TIME.match(value.strip())
    if not match:
        raise ValueError(
            f"{value!r} is not a Slurm time limit; use minutes (90), H:M:S (01:30:00) or D-H:M:S (1-12:00:00)"
        )
    days, first, second, third = match.groups()
    if days is not None:  # D-H, D-H:M, D-H:M:S
        seconds = int(days) * 86400 + int(first) * 3600 + int(second or 0) * 60 + int(third or 0)
    elif third is not None:  # H:M:S
        seconds = int(first) * 3600 + int(second) * 60 + int(third)
    elif second is not None:  # M:S
        seconds = int(first) * 60 + int(second)
    else:  # M
        seconds = int(first) * 60
    if seconds < 60:
        raise ValueError(f"time limit {value!r} is under a minute")
    return math.ceil(seconds / 60)


class LaunchConfig(Section):
    """Slurm resources for `vigsp submit` (one rank per GPU, or tasks_per_node ranks on CPU)."""

    nodes: int = Field(1, ge=1)
    min_nodes: int | None = Field(
        None,
        ge=1,
        description="after a node failure, when fewer than `nodes` nodes of the partition are up, the "
        "requeued job shrinks to those (not below this) and resumes on that world size (elastic "
        "resume); null = it waits for `nodes` nodes",
    )
    gpus_per_node: int = Field(1, ge=0, description="0 = CPU-only ranks")
    tasks_per_node: int | None = Field(None, ge=1, description="ranks per node; null = gpus_per_node (>= 1)")
    partition: str | None = None
    time: int | str = Field("24:00:00", description="wall-clock limit per job: minutes or [D-]H:M:S")
    account: str | None = None
    qos: str | None = None
    constraint: str | None = Field(None, description="sbatch --constraint, e.g. 'h100|a100'")
    mem: str | None = Field(None, description="memory per node, e.g. '200G'; null = cluster default")
    cpus_per_task: int | None = Field(None, ge=1)
    signal_delay_s: int = Field(120, ge=0, description="USR2 this many seconds before the time limit")
    max_num_timeout: int = Field(20, ge=0, description="how many times a timed-out job is requeued")
    node_failure_wait_s: float = Field(
        90,
        ge=0,
        description="when a rank's peers vanish, how long to wait for Slurm to see one of the job's "
        "nodes not responding; if it does, the job is requeued and resumes from its checkpoint "
        "(vigsp/launch/node_failure.py); 0 = never, the error ends the job",
    )
    extra_sbatch: dict[str, str | int | bool] = Field(
        default_factory=dict, description="more sbatch options, e.g. {reservation: foo, exclusive: true}"
    )

    @model_validator(mode="after")
    def _min_nodes_within_nodes(self) -> LaunchConfig:
        if self.min_nodes is not None and self.min_nodes > self.nodes:
            raise ValueError(f"launch.min_nodes={self.min_nodes} is more than launch.nodes={self.nodes}")
        return self

    @field_validator("time")
    @classmethod
    def _slurm_time(cls, value: int | str) -> int | str:
        slurm_time_to_minutes(value)
        return value

    @field_validator("mem")
    @classmethod
    def _slurm_mem(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d+[KMGT]?", value):
            raise ValueError(f"{value!r} is not a Slurm memory size; use e.g. 64G or 200000M")
        return value

    @property
    def ranks_per_node(self) -> int:
        return self.tasks_per_node or max(self.gpus_per_node, 1)

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node

    @property
    def timeout_min(self) -> int:
        return slurm_time_to_minutes(self.time)
