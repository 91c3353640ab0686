"""What ``vigsp submit --sweep`` runs: one (config, overrides) entry per array element.

``--sweep`` items, each one array element (or several, for a sweep file):

* a config, by path or name (``configs/imagenet100/vig_ti.yaml``, ``imagenet100/vig_sp196``);
* an override set, one quoted argument (``"optim.lr=1e-3 run.seed=1"``), applied to the CONFIG
  given before ``--sweep``;
* a sweep file: YAML with a top-level ``sweep:`` list (see slurm/sweeps/imagenet100.yaml)::

      overrides: [data.batch_size=64]      # optional: for every entry
      experiment: imagenet100              # optional: tracking.experiment_name of every entry
      sweep:
        - imagenet100/vig_ti               # a config
        - config: imagenet100/vig_sp196
          overrides: [optim.lr=1e-3]
          name: vig_sp196-lr1e-3           # optional run.name

Every element gets its own run.name (so its own run directory and MLflow run) and all share one
MLflow experiment, so that ``vigsp compare`` shows them side by side.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vigsp.config import find_config, load_config
from vigsp.config.schema import TrainConfig
from vigsp.config.yaml_io import load_yaml_file
from vigsp.errors import UserError

__all__ = ["Entry", "expand_sweep", "is_override", "plan_runs"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Entry:
    """One run: a config file and the overrides on top of it, in order."""

    config: Path
    overrides: list[str] = field(default_factory=list)
    source: str = "the command line"  # for messages
    loaded: TrainConfig | None = None

    @property
    def cfg(self) -> TrainConfig:
        if self.loaded is None:
            self.loaded = load_config(self.config, self.overrides)
        return self.loaded

    def reload(self) -> None:
        self.loaded = None


def is_override(token: str) -> bool:
    return "=" in token


def _sweep_file(path: Path) -> dict[str, Any] | None:
    """The parsed file if it is a sweep file (a ``sweep:`` list at the top), else None."""
    if path.suffix not in (".yaml", ".yml") or not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return None  # load_config will say what is wrong with it
    return data if isinstance(data, dict) and "sweep" in data else None


def _strings(value: Any, what: str, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where}: {what} must be a list of KEY=VALUE strings, got {value!r}")
    return list(value)


def _entries_of_file(path: Path, common: Sequence[str]) -> list[Entry]:
    data = load_yaml_file(path)
    unknown = set(data) - {"sweep", "overrides", "experiment"}
    if unknown:
        raise UserError(
            f"{path}: unknown key(s) {sorted(unknown)}; a sweep file has sweep, overrides, experiment"
        )
    shared = [*common, *_strings(data.get("overrides"), "overrides", str(path))]
    if data.get("experiment") is not None:
        shared.append(f"tracking.experiment_name={json.dumps(str(data['experiment']))}")
    items = data["sweep"]
    if not isinstance(items, list) or not items:
        raise UserError(f"{path}: 'sweep' must be a non-empty list of configs or {{config, overrides, name}}")
    entries = []
    for i, item in enumerate(items):
        where = f"{path}, sweep entry {i + 1}"
        if isinstance(item, str):
            item = {"config": item}
        if not isinstance(item, dict) or not isinstance(item.get("config"), str):
            raise UserError(
                f"{where}: write a config name, or a mapping with 'config' (and 'overrides', 'name')"
            )
        extra = set(item) - {"config", "overrides", "name"}
        if extra:
            raise UserError(f"{where}: unknown key(s) {sorted(extra)}; use config, overrides, name")
        overrides = [*shared, *_strings(item.get("overrides"), "overrides", where)]
        if item.get("name") is not None:
            overrides.append(f"run.name={json.dumps(str(item['name']))}")
        entries.append(Entry(_find(item["config"], relative_to=path.parent), overrides, where))
    return entries


def _find(name: str, relative_to: Path | None = None) -> Path:
    """A config by path or name, as an absolute path, so that the job finds it from any directory."""
    if relative_to is not None and (relative_to / name).is_file():
        return (relative_to / name).resolve()
    return find_config(name).resolve()


def expand_sweep(
    base: str | None, common: Sequence[str], items: Sequence[str] | None
) -> tuple[list[Entry], bool]:
    """The runs asked for, and whether they form a sweep (a job array)."""
    if not items:
        if base is None:
            raise UserError("no config given: vigsp submit CONFIG [KEY=VALUE ...], or --sweep ITEM ...")
        path = Path(base)
        if _sweep_file(path) is not None:  # a sweep file given as CONFIG: what else could it mean
            return _entries_of_file(path, common), True
        return [Entry(_find(base), list(common))], False

    entries: list[Entry] = []
    for item in items:
        if is_override(item):
            if base is None:
                raise UserError(
                    f"--sweep item {item!r} is an override set, which needs a CONFIG before --sweep: "
                    "vigsp submit CONFIG --sweep 'optim.lr=1e-3' 'optim.lr=3e-3'. For overrides shared by "
                    "every entry, put them before --sweep: vigsp submit KEY=VALUE --sweep A.yaml B.yaml"
                )
            try:
                tokens = shlex.split(item)
            except ValueError as err:
                raise UserError(f"--sweep item {item!r}: {err}") from None
            entries.append(Entry(_find(base), [*common, *tokens], f"--sweep {item!r}"))
        elif _sweep_file(Path(item)) is not None:
            entries += _entries_of_file(Path(item), common)
        else:
            entries.append(Entry(_find(item), list(common), f"--sweep {item!r}"))
    if base is not None and not any(is_override(item) for item in items):
        raise UserError(
            f"CONFIG {base!r} before --sweep is only used with override sets; with configs in --sweep, "
            "list every config there: vigsp submit --sweep A.yaml B.yaml"
        )
    return entries, True


def _slug(overrides: Sequence[str]) -> str:
    parts = []
    for text in overrides:
        key, _, value = text.partition("=")
        parts.append(f"{key.rsplit('.', 1)[-1]}_{value}")
    return _UNSAFE.sub("_", "-".join(parts)).strip("._-")[:60]


def plan_runs(entries: list[Entry], experiment: str | None = None) -> str:
    """Load and validate every entry; give each its own run.name and all one MLflow experiment.

    Returns the experiment. Raises UserError for the first entry that does not load (naming where
    it came from) and for two entries that set the same run.name.
    """
    for entry in entries:
        try:
            entry.cfg  # noqa: B018 (loads and validates)
        except UserError as err:
            raise UserError(f"{entry.source}: {err}") if len(entries) > 1 else err from None

    if experiment is None:
        experiment = entries[0].cfg.tracking.experiment_name
    for entry in entries:
        if entry.cfg.tracking.experiment_name != experiment:
            entry.overrides.append(f"tracking.experiment_name={json.dumps(experiment)}")
            entry.reload()

    explicit = [any(o.startswith("run.name=") for o in e.overrides) for e in entries]
    names: dict[str, int] = {}
    for entry in entries:
        names[entry.cfg.run.name] = names.get(entry.cfg.run.name, 0) + 1
    seen: set[str] = set()
    for index, (entry, is_explicit) in enumerate(zip(entries, explicit, strict=True)):
        name = entry.cfg.run.name
        if names[name] > 1:
            if is_explicit:
                raise UserError(
                    f"run.name {name!r} is set for {names[name]} sweep entries: each needs its own, "
                    "since it names the run directory and the MLflow run"
                )
            # Named after what sets it apart (tiny_test-lr_1e-3), else after its position.
            suffix = _slug(_entry_only(entry, entries))
            name = f"{name}-{suffix}" if suffix else f"{name}-{index}"
            if name in seen or name in names:
                name = f"{entry.cfg.run.name}-{index}"
            entry.overrides.append(f"run.name={name}")
            entry.reload()
        seen.add(entry.cfg.run.name)
    return experiment


def _entry_only(entry: Entry, entries: list[Entry]) -> list[str]:
    """The overrides that set this entry apart from the others (what its name should mention)."""
    shared = set.intersection(*(set(e.overrides) for e in entries))
    return [o for o in entry.overrides if o not in shared and not o.startswith("tracking.experiment_name=")]
