"""vigsp: distributed training suite for ViG-SP, a Vision GNN on SLIC superpixels.

Heavy dependencies (torch, DALI, DeepSpeed, MLflow) are imported lazily by the
submodules that need them, so ``import vigsp`` and ``vigsp --help`` stay fast.
"""

from vigsp._version import __version__

__all__ = ["__version__"]
