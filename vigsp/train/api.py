"""``run_training``: what ``vigsp train`` and ``vigsp submit``'s job call in every rank."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence

from vigsp.config import load_config
from vigsp.config.model_inputs import check_superpixel_method
from vigsp.config.schema import TrainConfig
from vigsp.errors import UserError
from vigsp.train.distributed import (
    DistEnv,
    broadcast_object,
    close_process_group,
    cpu_threads_per_rank,
    init_process_group,
    read_env,
)
from vigsp.train.lease import RunLease
from vigsp.train.logs import setup_logging
from vigsp.train.outcome import TrainOutcome

__all__ = ["TrainOutcome", "hold_run_directory", "run_training"]

log = logging.getLogger("vigsp.train")


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
    init_process_group(env)
    try:
        # Before anything is written into the run directory (train.log included): the lease.
        with hold_run_directory(cfg, env) as lease:
            setup_logging(cfg.run.directory, env.rank)
            if lease is not None and lease.took_over:
                log.warning("took over the run directory %s from %s", cfg.run.directory, lease.took_over)
            from vigsp.train.engine import Trainer

            return Trainer(cfg, env, tracking_uri, lease).run()
    finally:
        close_process_group()


@contextlib.contextmanager
def hold_run_directory(cfg: TrainConfig, env: DistEnv) -> Iterator[RunLease | None]:
    """Rank 0 holds the run directory's lease (None on other ranks); a refusal, decided by rank 0,
    is raised on every rank, so that no rank of a refused training writes anything."""
    lease, refusal = None, None
    if env.is_main:
        try:
            lease = RunLease(cfg.run.directory, cfg.checkpoint.lease_timeout_s).acquire()
        except UserError as err:
            refusal = str(err)
    refusal = broadcast_object(refusal, env)
    if refusal is not None:
        raise UserError(refusal)
    if lease is None:
        yield None
        return
    with lease:
        yield lease


logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
