"""The job `vigsp submit` queues: one training run, started in every task, requeued by submitit.

Requeue protocol (preemption, time limit):

1. Slurm sends USR2 to every task (``--signal=USR2@signal_delay_s``; at once on preemption).
2. The training engine has its own USR2/SIGTERM handlers installed while it trains: they only set
   a flag, every rank saves a checkpoint at the next step boundary, and ``run_training`` returns
   ``TrainOutcome(status="stopped")`` after putting submitit's handlers back.
3. Global rank 0 raises the signal again, now for submitit's handler: it counts a timeout or a
   preemption, calls ``TrainJob.checkpoint`` (Checkpointable's), runs ``scontrol requeue`` and
   exits. The other ranks exit without a result file, so the requeued run writes the only results.
4. The requeued job runs the same ``TrainJob``; the engine resumes from its checkpoint in the run
   directory and continues the same MLflow run.

Node failure: the ranks on the surviving nodes fail in their next collective; ``TrainJob`` asks
Slurm whether a node of the job stopped responding and, if one did, requeues the job
(vigsp/launch/node_failure.py), which then resumes the same way.

The save cannot happen in ``checkpoint()``: submitit calls it on rank 0 only, while DeepSpeed must
save on all ranks together.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import submitit
from submitit.core.job_environment import JobEnvironment

from vigsp.launch.node_failure import requeue_after_node_failure
from vigsp.train.outcome import TrainOutcome

__all__ = ["DistributedSetup", "TrainFunction", "TrainJob", "setup_distributed"]


class TrainFunction(Protocol):
    def __call__(
        self, config: str | Path, overrides: Sequence[str] = (), *, tracking_uri: str | None = None
    ) -> TrainOutcome: ...


@dataclass(frozen=True)
class DistributedSetup:
    rank: int
    world_size: int
    local_rank: int
    master: str
    device: str  # "cpu" or "cuda:N" (N indexes CUDA_VISIBLE_DEVICES)


def setup_distributed() -> DistributedSetup:
    """Export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for torch.distributed and
    DeepSpeed from submitit's view of the task, and say which device the rank will use."""
    # overwrite: a job submitted from inside another job inherits that job's RANK etc.; an inherited
    # MASTER_PORT is still kept (the constructor reads it). CUDA_VISIBLE_DEVICES stays as Slurm set
    # it: submitit would narrow it to the device numbered LOCAL_RANK, which is another job's GPU
    # when Slurm gave this job GPUs 4-7 of a node without device cgroups.
    inherited_port = "MASTER_PORT" in os.environ
    env = submitit.helpers.TorchDistributedEnvironment().export(
        set_cuda_visible_devices=False, overwrite=True
    )
    from vigsp.train.distributed import free_port, rank_device

    if env.world_size == 1 and not inherited_port:
        # submitit derives the port from the job id: array elements sharing a node could meet on
        # one, and it may lie among the ephemeral ports. One process needs no agreement: any free one.
        env.master_port = free_port()
        os.environ["MASTER_PORT"] = str(env.master_port)
    device = str(rank_device(env.local_rank))  # what the engine will pick (read_env), DALI's too
    return DistributedSetup(
        rank=env.rank,
        world_size=env.world_size,
        local_rank=env.local_rank,
        master=f"{env.master_addr}:{env.master_port}",
        device=device,
    )


def _engine() -> TrainFunction:
    from vigsp.train.api import run_training  # imported in the job: the submitting side needs no torch

    return run_training


class TrainJob(submitit.helpers.Checkpointable):
    """``run_training(config, overrides, tracking_uri=...)`` in every task of a submitit job.

    ``workdir`` is where relative paths in the config (run.output_dir, data paths) were meant from:
    the directory ``vigsp submit`` ran in. ``train`` replaces the engine (a stand-in, say).

    ``checkpoint()`` is Checkpointable's own (this job again, same arguments): the engine's
    checkpoint in the run directory, saved by all ranks before rank 0 gets there, holds the state.
    """

    def __init__(
        self,
        config: str,
        overrides: Sequence[str] = (),
        *,
        tracking_uri: str | None = None,
        workdir: str | None = None,
        train: TrainFunction | None = None,
        node_failure_wait_s: float = 90,
        min_nodes: int | None = None,
    ) -> None:
        self.config = config
        self.node_failure_wait_s = node_failure_wait_s
        self.min_nodes = min_nodes
        self.overrides = list(overrides)
        self.tracking_uri = tracking_uri
        self.workdir = workdir or os.getcwd()
        self.train = train

    def __call__(self) -> TrainOutcome:
        os.chdir(self.workdir)
        dist = setup_distributed()
        job_env = submitit.JobEnvironment()
        print(
            f"vigsp: {job_env}, rank {dist.rank}/{dist.world_size} on {dist.device}, "
            f"master {dist.master}, restart {os.environ.get('SLURM_RESTART_COUNT', '0')}",
            flush=True,
        )
        train = self.train or _engine()
        try:
            outcome = train(self.config, self.overrides, tracking_uri=self.tracking_uri)
        except RuntimeError as err:  # torch.distributed's errors, a vanished peer's among them
            wait_s = self.node_failure_wait_s if dist.world_size > 1 else 0
            if wait_s > 0 and requeue_after_node_failure(err, wait_s, self.min_nodes):
                sys.exit(0)  # no result file: the requeued run writes the only results
            raise
        if outcome.status == "stopped":
            self._stopped(outcome, dist.rank)
        return outcome

    def _stopped(self, outcome: TrainOutcome, rank: int) -> None:
        signum = outcome.stop_signal
        name = signal.Signals(signum).name if signum else "a stop signal"
        print(f"vigsp: rank {rank} stopped on {name} at step {outcome.global_step}", flush=True)
        if signum == JobEnvironment._usr_sig():
            handler = signal.getsignal(signum)
            if not callable(handler):
                # Raising it now would kill the process (default action) instead of requeueing.
                raise RuntimeError(
                    f"the training engine did not restore submitit's {name} handler (found {handler!r})"
                )
            # Rank 0: submitit's handler decides timeout vs preemption (max_num_timeout bounds the
            # former), calls checkpoint(), requeues and exits; or raises UncompletedJobError when
            # no more timeouts are allowed, which fails the job with that message.
            # Other ranks: the handler only logs, and they leave below.
            signal.raise_signal(signum)
        # SIGTERM (scancel, scontrol requeue, the end of a preemption's grace time): Slurm itself
        # ends or requeues the job. Either way, leave no result file (SystemExit passes submitit's
        # `except Exception`), so the next run's results are the only ones; exit 0 so that
        # --kill-on-bad-exit does not kill a rank still leaving.
        sys.exit(0)
