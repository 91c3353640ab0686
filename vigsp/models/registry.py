"""Named model configurations: ``create_model(name, **overrides)`` and ``list_models()``."""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vigsp.errors import UserError
from vigsp.models.inputs import SUPERPIXEL_MODEL_INPUTS, ModelInputs

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its class (imported on first use: the registry itself needs no
    torch), the arguments of this configuration, and the batch fields its forward reads."""

    name: str
    class_path: str  # "module:Class"
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    reads: tuple[str, ...] = ("images",)

    @property
    def cls(self) -> type[nn.Module]:
        module, name = self.class_path.split(":")
        return getattr(importlib.import_module(module), name)

    def defaults(self) -> dict[str, Any]:
        """Every constructor argument with the value this config uses."""
        params = inspect.signature(self.cls.__init__).parameters
        values = {n: p.default for n, p in params.items() if n != "self"}
        return {**values, **self.kwargs}

    def inputs(self, overrides: Mapping[str, Any] | None = None) -> ModelInputs:
        """What this model, built with ``overrides``, reads and which graphs it is built for."""
        if self.reads != SUPERPIXEL_MODEL_INPUTS:
            return ModelInputs(self.reads)
        values = {**self.kwargs, **(overrides or {})}
        return ModelInputs(self.reads, values["superpixel_method"], values["n_segments"], values["max_nodes"])


_TI = {"channels": 192, "depth": 12}
# Tiny models for the 2-core CPU quick start (Fashion-MNIST at its native 28 px, 10 classes, 49
# nodes); the UNet widths were chosen by the quick-start runs recorded in BENCHMARKS.md.
_TINY = {"channels": 64, "depth": 4, "num_classes": 10, "img_size": 28, "head_hidden": 256}
_TINY_SP = {**_TINY, "unet_width": 16, "pixel_channels": 32, "fourier_bands": 6}
_VIG = "vigsp.models.vig:ViG"
_VIG_SP = "vigsp.models.vig_sp:ViGSP"
_SLIC = {"superpixel_method": "slic"}

_SPECS = [
    ModelSpec("vig_ti_patch", _VIG, {**_TI}, "ViG-Ti, 14x14 patches (Han et al. 2022)"),
    ModelSpec("vig_s_patch", _VIG, {"channels": 320, "depth": 16}, "ViG-S, 14x14 patches"),
    ModelSpec("vig_b_patch", _VIG, {"channels": 640, "depth": 16}, "ViG-B, 14x14 patches"),
    ModelSpec(
        "vig_sp196_ti",
        _VIG_SP,
        {**_TI, **_SLIC, "n_segments": 196, "max_nodes": 256},
        "ViG-SP on ~196 SLIC superpixels",
        SUPERPIXEL_MODEL_INPUTS,
    ),
    ModelSpec(
        "vig_sp100_ti",
        _VIG_SP,
        {**_TI, **_SLIC, "n_segments": 100, "max_nodes": 128},
        "ViG-SP on ~100 SLIC superpixels",
        SUPERPIXEL_MODEL_INPUTS,
    ),
    ModelSpec(
        "vig_sp_grid_ti",
        _VIG_SP,
        {**_TI, "n_segments": 196, "max_nodes": 196, "superpixel_method": "grid"},
        "ViG-SP front end on a 14x14 grid of square 'superpixels' (ablation)",
        SUPERPIXEL_MODEL_INPUTS,
    ),
    ModelSpec(
        "vig_tiny_patch",
        _VIG,
        {**_TINY, "stem_downsamples": 2},
        "tiny patch ViG, 7x7 patches of 4x4 px (CPU quick start)",
    ),
    ModelSpec(
        "vig_sp_tiny",
        _VIG_SP,
        {**_TINY_SP, **_SLIC, "n_segments": 49, "max_nodes": 64},
        "tiny ViG-SP on ~49 SLIC superpixels (CPU quick start)",
        SUPERPIXEL_MODEL_INPUTS,
    ),
    ModelSpec(
        "vig_sp_grid_tiny",
        _VIG_SP,
        {**_TINY_SP, "n_segments": 49, "max_nodes": 49, "superpixel_method": "grid"},
        "tiny ViG-SP on a 7x7 grid (CPU quick start ablation)",
        SUPERPIXEL_MODEL_INPUTS,
    ),
]
REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def list_models() -> list[str]:
    return list(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, REGISTRY, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UserError(
            f"unknown model {name!r}.{hint} Registered models: {', '.join(REGISTRY)} (see `vigsp models`)."
        ) from None


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build a registered model; ``overrides`` replace config values (num_classes, drop_path_rate, ...)."""
    spec = get_spec(name)
    allowed = spec.defaults()
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise UserError(
            f"model {name!r} has no option(s) {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(sorted(allowed))}."
        )
    try:
        return spec.cls(**{**spec.kwargs, **overrides})
    except (ValueError, TypeError) as err:
        raise UserError(f"model {name!r} with overrides {overrides}: {err}") from err
