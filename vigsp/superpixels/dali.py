"""Loads vigsp's DALI operator plugin, so users never call ``plugin_manager.load_library``.

The plugin is compiled against one DALI version's headers and ABI; loading it into another
DALI can crash the process, so the versions are checked first.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from vigsp import _native
from vigsp.errors import UserError

_lock = threading.Lock()
_loaded = False


def plugin_path() -> Path:
    """Where the build put ``libvigsp_dali.so``: beside the pybind11 module."""
    return Path(_native.__file__).with_name("libvigsp_dali.so")


def load() -> None:
    """Makes ``nvidia.dali.fn.vigsp.superpixel_graph`` available in this process. Idempotent."""
    global _loaded
    with _lock:
        if _loaded:
            return
        import nvidia.dali
        from nvidia.dali import plugin_manager

        built_for = _native.DALI_BUILD_VERSION
        if not built_for or not plugin_path().exists():
            raise UserError(
                "vigsp was built without its DALI plugin (DALI was not importable at build time). "
                "Install nvidia-dali-cuda130==2.4.0 and rebuild: pip install --force-reinstall --no-deps ."
            )
        if nvidia.dali.__version__ != built_for:
            raise UserError(
                f"vigsp's DALI plugin was built against DALI {built_for}, but DALI "
                f"{nvidia.dali.__version__} is installed. Install the matching DALI "
                f"(pip install nvidia-dali-cuda130=={built_for}) or rebuild vigsp against this one "
                "(pip install --force-reinstall --no-deps --no-build-isolation .)."
            )
        plugin_manager.load_library(str(plugin_path()))
        _loaded = True


def superpixel_graph(images: Any, **kwargs: Any) -> Any:
    """``fn.vigsp.superpixel_graph`` inside a pipeline definition, loading the plugin first.

    Returns DataNodes (labels, rag_edges, features, pixel_mask); see the operator's docstring.
    """
    load()
    from nvidia.dali import fn

    return fn.vigsp.superpixel_graph(images, **kwargs)
