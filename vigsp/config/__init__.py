"""Training-run configuration: schema, loading with ``base:`` includes and dotted overrides,
the DeepSpeed config dict, and the checkpoint-compatibility hash.

Typical use::

    cfg = load_config("quickstart", ["optim.lr=1e-3", "data.batch_size=32"])
    (run_dir / "config.yaml").write_text(resolved_yaml(cfg))
    ds_config = to_deepspeed_config(cfg, world_size)

The names load on first use (PEP 562): the sections live beside their owners
(``vigsp.data.config`` ...) and import ``vigsp.config.section``, so an eager import of the
schema here would cycle whenever an owner's config is imported first.
"""

import importlib
from typing import Any

_HOMES = {
    "INCOMPATIBLE_KEYS": "vigsp.config.compat",
    "check_resume_compatible": "vigsp.config.compat",
    "config_hash": "vigsp.config.compat",
    "diff_incompatible": "vigsp.config.compat",
    "global_batch_size": "vigsp.config.deepspeed_config",
    "scaled_lr": "vigsp.config.deepspeed_config",
    "to_deepspeed_config": "vigsp.config.deepspeed_config",
    "config_dirs": "vigsp.config.loading",
    "find_config": "vigsp.config.loading",
    "list_configs": "vigsp.config.loading",
    "load_config": "vigsp.config.loading",
    "validate_tree": "vigsp.config.loading",
    "TrainConfig": "vigsp.config.schema",
    "resolved_yaml": "vigsp.config.serialize",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'vigsp.config' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
