"""What the Slurm cluster offers, read from ``sinfo``, and checks of a job request against it.

``vigsp submit`` calls these before queueing anything, so a typo in a partition name or a request
for more GPUs than a node has fails at once with a list of what exists, instead of a job that
pends forever or an sbatch error after the user has walked away.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from vigsp.errors import UserError

# "gpu:2", "gpu:a100:4", "gpu:a100:4(S:0-1)"; several entries are comma separated.
_GPU_GRES = re.compile(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)")
_SINFO_TIMEOUT_S = 30
_START_HINT = (
    "start the local dev cluster with `slurm/dev-cluster/start.sh` and export the SLURM_CONF it prints"
)


@dataclass(frozen=True)
class Node:
    name: str
    cpus: int
    memory_mb: int
    gpus: int


@dataclass(frozen=True)
class Partition:
    name: str
    is_default: bool
    available: bool
    max_time_min: int | None  # None: no limit
    nodes: tuple[Node, ...]

    @property
    def max_cpus(self) -> int:
        return max((n.cpus for n in self.nodes), default=0)

    @property
    def max_gpus(self) -> int:
        return max((n.gpus for n in self.nodes), default=0)

    @property
    def max_memory_mb(self) -> int:
        return max((n.memory_mb for n in self.nodes), default=0)

    def describe(self) -> str:
        limit = (
            "no time limit" if self.max_time_min is None else f"max time {format_minutes(self.max_time_min)}"
        )
        tags = ["default"] if self.is_default else []
        if not self.available:
            tags.append("not up")
        tag = f" [{', '.join(tags)}]" if tags else ""
        return (
            f"{self.name}{tag}: {len(self.nodes)} node(s), up to {self.max_cpus} CPUs, {self.max_gpus} GPUs, "
            f"{self.max_memory_mb / 1024:.1f} GiB per node, {limit}"
        )


@dataclass(frozen=True)
class JobRequest:
    """Per-node resources of a job, as sbatch would be asked for them."""

    partition: str | None = None  # None: the cluster's default partition
    nodes: int = 1
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    memory_gb: float | None = None  # per node; None: the partition default
    time_min: int | None = None  # None: the partition default


def parse_slurm_time(text: str) -> int | None:
    """Minutes in a Slurm time string ("30", "4:00:00", "1-12", "1-00:00:00"); None for unlimited.

    Seconds are rounded up, as Slurm does, so a limit is never understated.
    """
    text = text.strip()
    if text.lower() in ("infinite", "unlimited"):
        return None
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        raise ValueError(f"not a Slurm time: {text!r} (expected e.g. 90, 4:00:00 or 1-00:00:00)")
    days, first, second, third = match.groups()
    if days is not None:  # days-hours[:minutes[:seconds]]
        hours, minutes, seconds = int(first), int(second or 0), int(third or 0)
    elif third is not None:  # hours:minutes:seconds
        hours, minutes, seconds = int(first), int(second), int(third)
    else:  # minutes[:seconds]
        hours, minutes, seconds = 0, int(first), int(second or 0)
    return (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)


def format_minutes(minutes: int) -> str:
    days, rest = divmod(minutes, 24 * 60)
    text = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text


def gpus_in_gres(gres: str) -> int:
    """Number of GPUs in a node's gres string from sinfo (``(null)`` when it has none)."""
    return sum(int(count) for count in _GPU_GRES.findall(gres))


def _run_sinfo(*args: str) -> str:
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        raise UserError(
            f"Slurm is not available here: `sinfo` is not on PATH. Run on a login node, or {_START_HINT}."
        )
    conf = os.environ.get("SLURM_CONF")
    if conf and not os.path.isfile(conf):
        # sinfo would retry a missing config for a whole minute before failing.
        raise UserError(
            f"SLURM_CONF={conf} does not exist. Unset it or point it at slurm.conf; or {_START_HINT}."
        )
    try:
        done = subprocess.run(
            [sinfo, "--noheader", *args],
            capture_output=True,
            text=True,
            timeout=_SINFO_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise UserError(
            f"Slurm did not answer `sinfo` within {_SINFO_TIMEOUT_S}s (SLURM_CONF={conf or 'default'}). "
            f"Check that slurmctld is running; or {_START_HINT}."
        ) from None
    if done.returncode != 0:
        error = (
            done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit code {done.returncode}"
        )
        raise UserError(
            f"Slurm is not reachable: `sinfo` failed with: {error} (SLURM_CONF={conf or 'default'}). "
            f"Check that slurmctld is running; or {_START_HINT}."
        )
    return done.stdout


def check_reachable() -> None:
    """Raise UserError with a hint unless ``sinfo`` answers with the current SLURM_CONF."""
    _run_sinfo("--format=%R")


def read_partitions() -> dict[str, Partition]:
    """The cluster's partitions with the resources of their nodes, by name."""
    # %R name, %P name with "*" on the default, %a up/down, %l max time.
    summary = _run_sinfo("--format=%R|%P|%a|%l")
    # One line per (node, partition): %c CPUs, %m memory in MB, %G gres.
    per_node = _run_sinfo("--Node", "--format=%R|%N|%c|%m|%G")

    nodes: dict[str, list[Node]] = {}
    for line in per_node.splitlines():
        if not line.strip():
            continue
        part, name, cpus, memory, gres = line.split("|")
        node = Node(
            name=name, cpus=int(cpus.rstrip("+")), memory_mb=int(memory.rstrip("+")), gpus=gpus_in_gres(gres)
        )
        nodes.setdefault(part, []).append(node)

    partitions: dict[str, Partition] = {}
    for line in summary.splitlines():
        if not line.strip():
            continue
        name, shown, avail, max_time = line.split("|")
        if name in partitions:  # sinfo may split a partition over lines; the fields we read agree
            continue
        partitions[name] = Partition(
            name=name,
            is_default=shown.endswith("*"),
            available=avail == "up",
            max_time_min=parse_slurm_time(max_time),
            nodes=tuple(nodes.get(name, ())),
        )
    return partitions


def validate_request(request: JobRequest, partitions: dict[str, Partition]) -> Partition:
    """Return the partition the job will run in, or raise UserError saying what does not fit."""
    if not partitions:
        raise UserError(
            "`sinfo` lists no partitions this account can use; ask the cluster admins which to use"
        )
    listing = "\n".join(f"  {p.describe()}" for p in partitions.values())
    if request.partition is None:
        defaults = [p for p in partitions.values() if p.is_default]
        if not defaults:
            raise UserError(f"this cluster has no default partition; choose one of:\n{listing}")
        part = defaults[0]
    elif request.partition in partitions:
        part = partitions[request.partition]
    else:
        raise UserError(f"unknown Slurm partition {request.partition!r}; this cluster has:\n{listing}")

    where = f"partition {part.name!r}"
    cpus = request.tasks_per_node * request.cpus_per_task
    memory_mb = None if request.memory_gb is None else int(request.memory_gb * 1024)
    problems = []
    if request.gpus_per_node > part.max_gpus:
        problems.append(
            f"{request.gpus_per_node} GPUs per node requested, but its nodes have at most {part.max_gpus}"
        )
    if cpus > part.max_cpus:
        problems.append(
            f"{cpus} CPUs per node requested "
            f"({request.tasks_per_node} task(s) x {request.cpus_per_task} CPUs), "
            f"but its nodes have at most {part.max_cpus}"
        )
    if memory_mb is not None and memory_mb > part.max_memory_mb:
        problems.append(
            f"{request.memory_gb:g} GiB per node requested, "
            f"but its nodes have at most {part.max_memory_mb / 1024:.1f} GiB"
        )
    if (
        request.time_min is not None
        and part.max_time_min is not None
        and request.time_min > part.max_time_min
    ):
        problems.append(
            f"time {format_minutes(request.time_min)} requested, "
            f"over its limit of {format_minutes(part.max_time_min)}"
        )
    if not problems:
        fitting = [
            n
            for n in part.nodes
            if n.gpus >= request.gpus_per_node
            and n.cpus >= cpus
            and (memory_mb is None or n.memory_mb >= memory_mb)
        ]
        if len(fitting) < request.nodes:
            memory = "" if request.memory_gb is None else f" and {request.memory_gb:g} GiB"
            problems.append(
                f"{request.nodes} nodes requested, but only {len(fitting)} of its nodes have "
                f"{request.gpus_per_node} GPUs, {cpus} CPUs{memory}"
            )
    if problems:
        reasons = "\n".join(f"  - {p}" for p in problems)
        raise UserError(f"the job does not fit {where}:\n{reasons}\nThis cluster has:\n{listing}")
    return part
