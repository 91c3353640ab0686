"""Named model configurations: ``create_model(name, **overrides)`` and ``list_models()``."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from vigsp.errors import UserError
from vigsp.models.vig import ViG
from vigsp.models.vig_sp import ViGSP


@dataclass(frozen=True)
class ModelSpec:
    name: str
    cls: type[nn.Module]
    kwargs: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def defaults(self) -> dict[str, Any]:
        """Every constructor argument with the value this config uses."""
        params = inspect.signature(self.cls.__init__).parameters
        values = {n: p.default for n, p in params.items() if n != "self"}
        return {**values, **self.kwargs}


_TI = {"channels": 192, "depth": 12}
# Tiny models for the 2-core CPU quick start (Fashion-MNIST at its native 28 px, 10 classes, 49
# nodes); the UNet widths were chosen by the quick-start runs recorded in BENCHMARKS.md.
_TINY = {"channels": 64, "depth": 4, "num_classes": 10, "img_size": 28, "head_hidden": 256}
_TINY_SP = {**_TINY, "unet_width": 16, "pixel_channels": 32, "fourier_bands": 6}

_SPECS = [
    ModelSpec("vig_ti_patch", ViG, {**_TI}, "ViG-Ti, 14x14 patches (Han et al. 2022)"),
    ModelSpec("vig_s_patch", ViG, {"channels": 320, "depth": 16}, "ViG-S, 14x14 patches"),
    ModelSpec("vig_b_patch", ViG, {"channels": 640, "depth": 16}, "ViG-B, 14x14 patches"),
    ModelSpec(
        "vig_sp196_ti", ViGSP, {**_TI, "n_segments": 196, "max_nodes": 256}, "ViG-SP on ~196 SLIC superpixels"
    ),
    ModelSpec(
        "vig_sp100_ti", ViGSP, {**_TI, "n_segments": 100, "max_nodes": 128}, "ViG-SP on ~100 SLIC superpixels"
    ),
    ModelSpec(
        "vig_sp_grid_ti",
        ViGSP,
        {**_TI, "n_segments": 196, "max_nodes": 196, "superpixel_method": "grid"},
        "ViG-SP front end on a 14x14 grid of square 'superpixels' (ablation)",
    ),
    ModelSpec(
        "vig_tiny_patch",
        ViG,
        {**_TINY, "stem_downsamples": 2},
        "tiny patch ViG, 7x7 patches of 4x4 px (CPU quick start)",
    ),
    ModelSpec(
        "vig_sp_tiny",
        ViGSP,
        {**_TINY_SP, "n_segments": 49, "max_nodes": 64},
        "tiny ViG-SP on ~49 SLIC superpixels (CPU quick start)",
    ),
    ModelSpec(
        "vig_sp_grid_tiny",
        ViGSP,
        {**_TINY_SP, "n_segments": 49, "max_nodes": 49, "superpixel_method": "grid"},
        "tiny ViG-SP on a 7x7 grid (CPU quick start ablation)",
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
