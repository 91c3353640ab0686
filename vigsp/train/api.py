"""``run_training``: what ``vigsp train`` and ``vigsp submit``'s job call in every rank."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from vigsp.config import load_config
from vigsp.config.model_inputs import check_superpixel_method
from vigsp.train.distributed import cpu_threads_per_rank, init_process_group, read_env
from vigsp.train.logs import setup_logging
from vigsp.train.outcome import TrainOutcome

__all__ = ["TrainOutcome", "run_training"]


def run_training(
    config: str | os.PathLike[str], overrides: Sequence[str] = (), *, tracking_uri: str | None = None
) -> TrainOutcome:
    """Train (or resume) the run of ``config`` + ``overrides`` on this rank.

    The rank layout comes from RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT (a single process
    without them). SIGUSR2/SIGTERM stop every rank at the next step with a checkpoint; the previous
    handlers are back in place when this returns ``TrainOutcome(status="stopped")``.
    """
    cfg = load_config(config, list(overrides))
    check_superpixel_method(cfg)  # before any file is written
    env = read_env()
    threads = cpu_threads_per_rank()
    if threads is not None and env.device.type == "cpu":
        import torch

        torch.set_num_threads(threads)
    run_dir = cfg.run.directory
    setup_logging(run_dir, env.rank)
    init_process_group(env)
    from vigsp.train.engine import Trainer

    return Trainer(cfg, env, tracking_uri).run()


logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
