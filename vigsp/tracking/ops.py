"""What the training thread hands to the MLflow sender, and the account of what never arrived."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class MetricsOp:
    values: dict[str, float]
    step: int
    timestamp_ms: int  # taken when logged, so a replay after an outage keeps the true time


@dataclass(frozen=True)
class ParamsOp:
    params: dict[str, str]


@dataclass(frozen=True)
class TagsOp:
    tags: dict[str, str]


@dataclass(frozen=True)
class ArtifactOp:
    path: Path
    artifact_path: str | None


@dataclass(frozen=True)
class ModelOp:
    folder: Path  # a saved MLflow model, uploaded as runs:/ID/artifact_path
    artifact_path: str
    register_as: str | None  # a Model Registry name: a new version of it
    version_tags: dict[str, str]


@dataclass(frozen=True)
class EndOp:
    status: str  # FINISHED, FAILED or KILLED


Op = MetricsOp | ParamsOp | TagsOp | ArtifactOp | ModelOp | EndOp


@dataclass
class Unlogged:
    """Counts per kind of what did not reach MLflow, with enough detail to know which steps."""

    counts: Counter[str] = field(default_factory=Counter)
    metric_steps: dict[str, list[int]] = field(default_factory=dict)  # key -> [count, first, last]
    artifacts: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, op: Op, reason: str) -> None:
        self.reasons[reason] += 1
        if isinstance(op, MetricsOp):
            self.counts["metrics"] += len(op.values)
            for key in op.values:
                entry = self.metric_steps.setdefault(key, [0, op.step, op.step])
                entry[0] += 1
                entry[1] = min(entry[1], op.step)
                entry[2] = max(entry[2], op.step)
        elif isinstance(op, ParamsOp):
            self.counts["params"] += len(op.params)
        elif isinstance(op, TagsOp):
            self.counts["tags"] += len(op.tags)
        elif isinstance(op, ArtifactOp):
            self.counts["artifacts"] += 1
            self.artifacts.append(str(op.path))
        elif isinstance(op, ModelOp):
            self.counts["models"] += 1
            self.artifacts.append(str(op.folder))
        else:
            self.counts["status"] += 1

    def merge(self, other: Unlogged) -> None:
        self.counts.update(other.counts)
        self.reasons.update(other.reasons)
        self.artifacts.extend(other.artifacts)
        for key, (count, first, last) in other.metric_steps.items():
            entry = self.metric_steps.setdefault(key, [0, first, last])
            entry[0] += count
            entry[1] = min(entry[1], first)
            entry[2] = max(entry[2], last)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return "everything was logged"
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.counts.items()))
        reasons = "; ".join(f"{reason} ({n})" for reason, n in self.reasons.most_common())
        return f"not logged: {kinds} [{reasons}]"

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "metric_steps": {
                k: {"count": c, "first_step": a, "last_step": b} for k, (c, a, b) in self.metric_steps.items()
            },
            "artifacts": self.artifacts,
            "reasons": dict(self.reasons),
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)
