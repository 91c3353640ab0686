"""Load a run config: find the file, follow ``base:`` includes, apply overrides, validate.

Precedence, lowest first: the default run name (the config's path under configs/), the
``base:`` chain (each base before the file that names it), the file itself, then the
command-line overrides in the order given. Mappings merge key by key; anything else
replaces. Every problem found is reported at once as a ``UserError``.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vigsp.config.messages import format_validation_error
from vigsp.config.model_inputs import resolve_model_inputs
from vigsp.config.overrides import OverrideError, deep_merge, parse_overrides, set_key
from vigsp.config.schema import TrainConfig
from vigsp.config.yaml_io import load_yaml_file
from vigsp.errors import UserError

__all__ = ["CONFIG_DIR_ENV", "config_dirs", "find_config", "list_configs", "load_config", "validate_tree"]

CONFIG_DIR_ENV = "VIGSP_CONFIG_DIR"
_SUFFIXES = (".yaml", ".yml")
_SOURCE_CHECKOUT_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def config_dirs() -> list[Path]:
    """Where config names are looked up: $VIGSP_CONFIG_DIR, ./configs, then the source checkout's."""
    candidates = [Path(os.environ[CONFIG_DIR_ENV])] if os.environ.get(CONFIG_DIR_ENV) else []
    candidates += [Path.cwd() / "configs", _SOURCE_CHECKOUT_CONFIGS]
    found: list[Path] = []
    for candidate in candidates:
        if candidate.is_dir() and all(candidate.resolve() != seen.resolve() for seen in found):
            found.append(candidate)
    return found


def list_configs(directory: Path) -> list[str]:
    """Config files under a directory, as relative paths (``imagenet100/vig_ti.yaml``)."""
    return sorted(
        path.relative_to(directory).as_posix()
        for path in directory.rglob("*")
        if path.suffix in _SUFFIXES and path.is_file()
    )


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _candidates(name: str, directories: Sequence[Path]) -> Iterator[Path]:
    for directory in directories:
        yield directory / name
        if Path(name).suffix not in _SUFFIXES:
            for suffix in _SUFFIXES:
                yield directory / f"{name}{suffix}"


def _available(directories: Sequence[Path]) -> tuple[str, list[str]]:
    """A paragraph listing the available configs, and all their names."""
    if not directories:
        return f"No configs/ directory found here; set {CONFIG_DIR_ENV} to the directory holding them.", []
    paragraphs, names = [], []
    for directory in directories:
        found = list_configs(directory)
        names += found
        listing = "\n".join(f"    {name}" for name in found) or "    (none)"
        paragraphs.append(f"Configs in {directory}:\n{listing}")
    return "\n".join(paragraphs), names


def find_config(name: str | os.PathLike[str]) -> Path:
    """The config file for a path or a name under a config directory (``.yaml`` may be left out)."""
    text = os.fspath(name)
    directories = config_dirs()
    tried = list(dict.fromkeys([Path(text), *_candidates(text, directories)]))
    for path in tried:
        if path.is_file():
            return path
    listing, names = _available(directories)
    close = difflib.get_close_matches(text, names, n=1, cutoff=0.6)
    hint = f"Did you mean {close[0]!r}?\n" if close else ""
    looked = ", ".join(_display(path) for path in tried)
    raise UserError(f"config file not found: {text!r} (looked for {looked})\n{hint}{listing}")


def _default_run_name(path: Path) -> str:
    resolved = path.resolve()
    for directory in config_dirs():
        try:
            relative = resolved.relative_to(directory.resolve())
        except ValueError:
            continue
        return relative.with_suffix("").as_posix().replace("/", "-")
    return path.stem


@dataclass
class _Layer:
    source: str  # where these values came from, for messages
    tree: dict[str, Any]


@dataclass
class _Sources:
    """Which file or override set each dotted key, so that errors can say where to fix it."""

    by_key: dict[str, str] = field(default_factory=dict)

    def record(self, tree: Mapping[str, Any], source: str, prefix: str = "") -> None:
        for key, value in tree.items():
            dotted = f"{prefix}{key}"
            self.by_key[dotted] = source
            if isinstance(value, Mapping):
                self.record(value, source, f"{dotted}.")

    def lookup(self, key: str) -> str | None:
        key = re.sub(r"\[\d+\]", "", key)  # list items come from wherever their list did
        if key in self.by_key:
            return self.by_key[key]
        # An unknown section set only through its children (override optimizer.lr=1 -> "optimizer").
        inside = [source for known, source in self.by_key.items() if known.startswith(f"{key}.")]
        if inside:
            return inside[-1]
        while key:
            key = key.rpartition(".")[0]
            if key in self.by_key:
                return self.by_key[key]
        return None


def _base_file(name: str, including: Path) -> Path:
    tried = list(dict.fromkeys(_candidates(name, [including.parent, *config_dirs()])))
    for path in tried:
        if path.is_file():
            return path
    looked = ", ".join(_display(path) for path in tried)
    raise UserError(f"{_display(including)}: base file {name!r} not found (looked for {looked})")


def _file_layers(path: Path, chain: tuple[Path, ...] = ()) -> list[_Layer]:
    if path.resolve() in chain:
        cycle = " -> ".join(_display(p) for p in (*chain, path.resolve()))
        raise UserError(f"config files include each other in a cycle: {cycle}")
    tree = load_yaml_file(path)
    if "defaults" in tree:
        raise UserError(
            f"{_display(path)}: 'defaults:' is not supported; "
            "write 'base: OTHER.yaml' to start from another config"
        )
    base = tree.pop("base", None)
    names = [base] if isinstance(base, str) else base
    if base is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise UserError(f"{_display(path)}: base must be a config file name or a list of them, got {base!r}")
    layers: list[_Layer] = []
    for name in names or []:
        layers += _file_layers(_base_file(name, path), (*chain, path.resolve()))
    layers.append(_Layer(_display(path), tree))
    return layers


def validate_tree(
    tree: Mapping[str, Any], what: str, sources: Mapping[str, str] | None = None
) -> TrainConfig:
    """Validate a nested dict into a TrainConfig, or raise a UserError listing every problem."""
    known = dict(sources or {})
    lookup = _Sources(known).lookup
    try:
        return TrainConfig.model_validate(tree)
    except ValidationError as err:
        lines = format_validation_error(err, lookup)
        count = f"{len(lines)} problem{'s' if len(lines) != 1 else ''}"
        bullet_list = "\n".join(f"  - {line}" for line in lines)
        raise UserError(f"invalid config {what} ({count}):\n{bullet_list}") from None


def load_config(config: str | os.PathLike[str], overrides: Sequence[str] = ()) -> TrainConfig:
    """Load, merge and validate a run config; see the module docstring for precedence."""
    path = find_config(config)
    try:
        parsed = parse_overrides(overrides)
    except OverrideError as err:
        raise UserError(str(err)) from None
    layers = [_Layer("the default run name", {"run": {"name": _default_run_name(path)}})]
    layers += _file_layers(path)
    tree: dict[str, Any] = {}
    sources = _Sources()
    for layer in layers:
        tree = deep_merge(tree, layer.tree)
        sources.record(layer.tree, layer.source)
    problems = []
    for override in parsed:
        try:
            set_key(tree, override.key, override.value)
        except OverrideError as err:
            problems.append(str(err))
            continue
        source = f"override {override.text!r}"
        sources.by_key[override.key] = source
        if isinstance(override.value, Mapping):
            sources.record(override.value, source, f"{override.key}.")
    if problems:
        raise UserError("\n".join(problems))
    return resolve_model_inputs(validate_tree(tree, _display(path), sources.by_key))
