"""Which process this is (rank, world, device) and the process group, from the launcher's env.

Launchers (torchrun, `vigsp submit`'s submitit job via TorchDistributedEnvironment, the sbatch
templates) export RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT. Without them this
is a single process, and we export them ourselves: DeepSpeed would otherwise fall back to MPI
discovery ("No module named 'mpi4py'").
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

import torch

from vigsp.errors import UserError

log = logging.getLogger(__name__)

_TORCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    @property
    def dali_device_id(self) -> int | None:
        """The GPU this rank's DALI pipelines run on (None: CPU-only pipelines)."""
        return self.device.index if self.device.type == "cuda" else None


def free_port() -> int:
    """A TCP port that is free on this host now (for a MASTER_PORT nobody else agreed on)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rank_device(local_rank: int) -> torch.device:
    """The device of the rank with this local rank: GPU ``local_rank`` among the visible ones
    (the only one when Slurm binds one per task), or the CPU when there is none or
    DS_ACCELERATOR=cpu asks for it; then DeepSpeed is told so, or it would look for CUDA."""
    if torch.cuda.is_available() and os.environ.get("DS_ACCELERATOR", "cuda") != "cpu":
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return torch.device("cpu")


def read_env() -> DistEnv:
    """The rank layout from the environment; a single process when none is set."""
    present = [name for name in _TORCH_VARS if name in os.environ]
    if not present:
        os.environ.update(
            RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())
        )
    elif len(present) != len(_TORCH_VARS):
        missing = [name for name in _TORCH_VARS if name not in os.environ]
        raise UserError(
            f"the distributed environment is incomplete: {', '.join(missing)} not set (have "
            f"{', '.join(present)}); launch with torchrun or `vigsp submit`, or set all of "
            f"{', '.join(_TORCH_VARS)}"
        )
    try:
        rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError as err:
        raise UserError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {err}") from None
    if not 0 <= rank < world:
        raise UserError(f"RANK={rank} is outside 0..WORLD_SIZE-1 ({world - 1})")
    device = rank_device(local)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return DistEnv(rank, world, local, device)


def cpu_threads_per_rank() -> int | None:
    """Intra-op threads for this rank: Slurm's CPUs per task, else the cores shared by the ranks
    on this machine. Several ranks each using every core oversubscribe the CPU (4x slower seen
    with 2 ranks on 2 cores). None when OMP_NUM_THREADS is set: torch follows it already."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return max(1, int(os.environ["SLURM_CPUS_PER_TASK"]))
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0) or 1
    return max(1, (os.cpu_count() or 1) // ranks_here)


def init_process_group(env: DistEnv) -> None:
    import deepspeed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    deepspeed.init_distributed(dist_backend=env.backend, auto_mpi_discovery=False)
    log.debug("process group: %s, rank %d of %d", env.backend, env.rank, env.world_size)


def close_process_group() -> None:
    """Leave the process group before the interpreter exits: a gloo group torn down by atexit after
    a peer has gone aborts the process ("terminate called without an active exception")."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def all_reduce_sum(values: list[float] | torch.Tensor, env: DistEnv) -> list[float]:
    """Sums of ``values`` over all ranks (float64, so counts stay exact)."""
    tensor = torch.as_tensor(values, dtype=torch.float64, device=env.device).clone()
    if env.world_size > 1:
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def any_rank(flag: bool, env: DistEnv) -> bool:
    """True on every rank if ``flag`` is True on any: how the ranks agree to stop together."""
    if env.world_size == 1:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=env.device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return bool(tensor.item())


def barrier(env: DistEnv) -> None:
    if env.world_size > 1:
        torch.distributed.barrier()


def all_gather_object(obj: Any, env: DistEnv) -> list[Any]:
    """``obj`` of every rank, in rank order (pickled: for small reports, not tensors)."""
    if env.world_size == 1:
        return [obj]
    gathered: list[Any] = [None] * env.world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, env: DistEnv) -> Any:
    """Rank 0's ``obj`` on every rank (what the others pass is ignored)."""
    if env.world_size == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
