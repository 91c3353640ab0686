"""Vision GNN models: the isotropic ViG (patches) and ViG-SP (superpixel nodes), plus a registry.

``create_model(name, **overrides)`` builds a registered config; ``list_models()`` names them.
Every model has a class attribute ``needs_superpixels``: when True its forward is
``model(images, labels, node_features, node_mask)``, otherwise ``model(images)``.
"""

from vigsp.models.registry import REGISTRY, create_model, get_spec, list_models
from vigsp.models.vig import IsotropicViG, ViG
from vigsp.models.vig_sp import ViGSP

__all__ = ["REGISTRY", "IsotropicViG", "ViG", "ViGSP", "create_model", "get_spec", "list_models"]
