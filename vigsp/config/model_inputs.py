"""The data settings a model's inputs fix: ``data.superpixel`` and ``data.max_nodes``.

The model declares what it reads (vigsp/models/inputs.py). For a superpixel model:
  * ``data.superpixel`` null: filled in from the model (its method and segment count), and
    ``data.max_nodes``, when null too, from the model's node capacity;
  * ``data.superpixel`` set: the data's segment count and node capacity are what the model is
    built for, unless ``model.overrides`` pins either, in which case the two must agree. A
    mismatch is refused by ``load_config``, before anything runs, naming both keys.
A superpixel method other than the model's is refused by the trainer (``check_superpixel_method``)
rather than here: such a config still loads, so that it can be compared with others.
"""

from __future__ import annotations

from typing import Any

from vigsp.config.schema import TrainConfig
from vigsp.data.config import SuperpixelConfig
from vigsp.errors import UserError
from vigsp.models.inputs import ModelInputs

__all__ = ["check_superpixel_method", "declared_inputs", "model_arguments", "resolve_model_inputs"]


def declared_inputs(cfg: TrainConfig) -> ModelInputs:
    # Imported here: the registry imports torch, which loading a config should not need.
    from vigsp.models.registry import get_spec

    return get_spec(cfg.model.name).inputs(cfg.model.overrides)


def _refuse(data_key: str, data_value: Any, model_key: str, model_value: Any, what: str) -> UserError:
    return UserError(
        f"{data_key} = {data_value!r} disagrees with the model's {what} {model_key} = {model_value!r}; "
        f"set {data_key} to {model_value!r}, or drop {model_key} so the model follows the data"
    )


def resolve_model_inputs(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with the data filled in from the model, or a UserError naming a mismatch."""
    declared = declared_inputs(cfg)
    if not declared.needs_superpixels:
        return cfg
    pinned = cfg.model.overrides
    superpixel, max_nodes = cfg.data.superpixel, cfg.data.max_nodes
    if superpixel is None:
        superpixel = SuperpixelConfig(method=declared.superpixel_method, n_segments=declared.n_segments)
        max_nodes = max_nodes if max_nodes is not None else declared.max_nodes
    if "n_segments" in pinned and pinned["n_segments"] != superpixel.n_segments:
        raise _refuse(
            "data.superpixel.n_segments",
            superpixel.n_segments,
            "model.overrides.n_segments",
            pinned["n_segments"],
            "segment count",
        )
    if "max_nodes" in pinned:
        if max_nodes is not None and pinned["max_nodes"] != max_nodes:
            raise _refuse(
                "data.max_nodes", max_nodes, "model.overrides.max_nodes", pinned["max_nodes"], "node capacity"
            )
        max_nodes = pinned["max_nodes"]
    if superpixel == cfg.data.superpixel and max_nodes == cfg.data.max_nodes:
        return cfg
    tree = cfg.model_dump()
    tree["data"].update(superpixel=superpixel.model_dump(), max_nodes=max_nodes)
    return TrainConfig.model_validate(tree)


def check_superpixel_method(cfg: TrainConfig) -> None:
    declared, superpixel = declared_inputs(cfg), cfg.data.superpixel
    if (
        declared.needs_superpixels
        and superpixel is not None
        and superpixel.method != declared.superpixel_method
    ):
        raise UserError(
            f"data.superpixel.method = {superpixel.method!r} disagrees with model.name = "
            f"{cfg.model.name!r}, which is built for {declared.superpixel_method!r} superpixels; set "
            f"data.superpixel.method={declared.superpixel_method} or choose a model built for "
            f"{superpixel.method!r} (`vigsp models`)"
        )


def model_arguments(cfg: TrainConfig) -> dict[str, Any]:
    """Keyword arguments for ``create_model(cfg.model.name, ...)``: the config's overrides, and
    for a superpixel model the segment count and node capacity of the data it will be fed."""
    kwargs = {
        "num_classes": cfg.model.num_classes,
        "drop_path_rate": cfg.model.drop_path_rate,
        **cfg.model.overrides,
    }
    if declared_inputs(cfg).needs_superpixels and cfg.data.superpixel is not None:
        kwargs.update(n_segments=cfg.data.superpixel.n_segments, max_nodes=cfg.data.node_capacity)
    return kwargs
