"""Vision GNN models: the isotropic ViG (patches) and ViG-SP (superpixel nodes), plus a registry.

``create_model(name, **overrides)`` builds a registered config; ``list_models()`` names them;
``get_spec(name).inputs()`` says what a model reads (``model(**batch fields)``: ``images``, and
for ViG-SP ``label_maps``, ``node_features``, ``node_mask``). The registry imports no torch, so
configs can be checked against it cheaply; the model classes load on first use.
"""

from typing import Any

from vigsp.models.registry import REGISTRY, create_model, get_spec, list_models

__all__ = ["REGISTRY", "IsotropicViG", "ViG", "ViGSP", "create_model", "get_spec", "list_models"]

_CLASSES = {"IsotropicViG": "vigsp.models.vig", "ViG": "vigsp.models.vig", "ViGSP": "vigsp.models.vig_sp"}


def __getattr__(name: str) -> Any:
    if name in _CLASSES:
        import importlib

        return getattr(importlib.import_module(_CLASSES[name]), name)
    raise AttributeError(f"module 'vigsp.models' has no attribute {name!r}")
