"""A rank whose peer vanished: was it a node failure? Slurm knows; then the job is requeued.

When a node dies (power, kernel, its slurmd killed), its ranks vanish and the surviving ranks'
next collective fails at once ("Connection closed by peer"). Left alone, the survivor would exit
with that error, the step would end, and the job would fail seconds before slurmctld marks the
node down and would have requeued it. So the survivor asks Slurm, for up to
``launch.node_failure_wait_s``, whether a node of this job stopped responding; if one did, it
requeues the job itself (``scontrol requeue``, what Slurm does on a node failure) and leaves
without a result. The requeued job resumes from the last complete checkpoint, in the same MLflow
run. A failure with every node healthy is a real error and is raised as it is.

With ``launch.min_nodes``, a requeued job that would wait for nodes that are not there shrinks:
when fewer of its partition's nodes are up than it ran on, its request becomes as many as are up
(not below ``min_nodes``), tasks and CPUs scaled to match (``scontrol update`` of the requeued job),
and it resumes on the smaller world size (elastic resume, vigsp/train/reshard.py). It does not grow
back by itself: ``scontrol update JobId=ID NumNodes=N`` while it is pending, or a new submission.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

__all__ = ["lost_nodes", "nodes_to_resume_on", "requeue_after_node_failure", "usable_nodes"]

# sinfo states of a node that is gone for this job; "*" means it stopped answering slurmctld.
_GONE = ("down", "drain", "fail", "unk", "no_respond")


def _gone(state: str) -> bool:
    return state.endswith("*") or state.lower().startswith(_GONE)


def _node_states(*selection: str) -> list[tuple[str, str]]:
    done = subprocess.run(
        ["sinfo", "--noheader", "--Node", *selection, "--format=%N %T"],
        capture_output=True,
        text=True,
        check=False,
    )
    return [(f[0], f[1]) for f in (line.split() for line in done.stdout.splitlines()) if len(f) == 2]


def usable_nodes(partition: str) -> list[str]:
    """Nodes of ``partition`` that are up (whether busy or not)."""
    return sorted({node for node, state in _node_states(f"--partition={partition}") if not _gone(state)})


def lost_nodes(nodelist: str, wait_s: float, poll_s: float = 1.0) -> list[str]:
    """Nodes of ``nodelist`` that Slurm sees as not responding or down, waiting up to ``wait_s``
    for one to show (slurmctld notices a dead node within SlurmdTimeout); [] if none does."""
    deadline = time.monotonic() + wait_s
    while True:
        lost = sorted({node for node, state in _node_states(f"--nodes={nodelist}") if _gone(state)})
        if lost or time.monotonic() >= deadline:
            return lost
        time.sleep(poll_s)


def requeue_after_node_failure(err: BaseException, wait_s: float, min_nodes: int | None = None) -> bool:
    """Requeue this Slurm job if a node of it failed (True); False outside Slurm or if none did."""
    job_id, nodelist = os.environ.get("SLURM_JOB_ID"), os.environ.get("SLURM_JOB_NODELIST")
    if not job_id or not nodelist:
        return False
    started = time.monotonic()
    lost = lost_nodes(nodelist, wait_s)
    if not lost:
        return False
    print(
        f"vigsp: node(s) {', '.join(lost)} of job {job_id} failed ({type(err).__name__}: {str(err)[:200]}); "
        f"seen by Slurm after {time.monotonic() - started:.0f} s. Requeueing the job: it resumes from its "
        "last complete checkpoint",
        flush=True,
    )
    # Asked before the requeue, which ends this job step (and signals what it runs).
    shrink = nodes_to_resume_on(min_nodes) if min_nodes is not None else None
    # Slurm may have requeued it already (it does once the node is DOWN): then this one fails, harmlessly.
    _scontrol("requeue", job_id)
    if shrink is not None:
        _shrink(job_id, *shrink)
    return True


def nodes_to_resume_on(min_nodes: int) -> tuple[int, int, int] | None:
    """(nodes to resume on, nodes up in the partition, nodes the job ran on) when fewer nodes of
    the job's partition are up than it ran on, never below ``min_nodes``; None: keep its size."""
    nodes = int(os.environ.get("SLURM_JOB_NUM_NODES", "1"))
    partition = os.environ.get("SLURM_JOB_PARTITION", "")
    up = len(usable_nodes(partition)) if partition else nodes
    wanted = max(min_nodes, min(up, nodes))
    return (wanted, up, nodes) if wanted < nodes else None


def _scontrol(*args: str) -> subprocess.CompletedProcess[str]:
    # SIGTERM ignored (inherited through exec): the requeue signals this job step's processes.
    return subprocess.run(
        ["scontrol", *args],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN),
    )


def _shrink(job_id: str, wanted: int, up: int, nodes: int) -> None:
    """The requeued job asks for ``wanted`` nodes, with its tasks and CPUs scaled to match."""
    tasks_per_node = int(os.environ.get("SLURM_NTASKS", str(nodes))) // nodes
    cpus = wanted * tasks_per_node * int(os.environ.get("SLURM_CPUS_PER_TASK", "1"))
    update = [f"NumNodes={wanted}", f"NumTasks={wanted * tasks_per_node}", f"NumCPUs={cpus}"]
    done = _scontrol("update", f"JobId={job_id}", *update)
    if done.returncode != 0:
        print(f"vigsp: could not shrink job {job_id} to {wanted} node(s): {done.stderr.strip()}", flush=True)
        return
    print(
        f"vigsp: {up} node(s) of its partition are up: job {job_id} resumes on {wanted} node(s) "
        f"instead of {nodes} (launch.min_nodes)",
        flush=True,
    )
