"""Training-run configuration: schema, loading with ``base:`` includes and dotted overrides,
the DeepSpeed config dict, and the checkpoint-compatibility hash.

Typical use::

    cfg = load_config("quickstart", ["optim.lr=1e-3", "data.batch_size=32"])
    (run_dir / "config.yaml").write_text(resolved_yaml(cfg))
    ds_config = to_deepspeed_config(cfg, world_size)
"""

from vigsp.config.compat import (
    INCOMPATIBLE_KEYS,
    check_resume_compatible,
    config_hash,
    diff_incompatible,
)
from vigsp.config.deepspeed_config import global_batch_size, scaled_lr, to_deepspeed_config
from vigsp.config.loading import config_dirs, find_config, list_configs, load_config, validate_tree
from vigsp.config.schema import TrainConfig
from vigsp.config.serialize import resolved_yaml

__all__ = [
    "INCOMPATIBLE_KEYS",
    "TrainConfig",
    "check_resume_compatible",
    "config_dirs",
    "config_hash",
    "diff_incompatible",
    "find_config",
    "global_batch_size",
    "list_configs",
    "load_config",
    "resolved_yaml",
    "scaled_lr",
    "to_deepspeed_config",
    "validate_tree",
]
