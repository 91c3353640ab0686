"""A rank whose peer vanished: was it a node failure? Slurm knows; then the job is requeued.

When a node dies (power, kernel, its slurmd killed), its ranks vanish and the surviving ranks'
next collective fails at once ("Connection closed by peer"). Left alone, the survivor would exit
with that error, the step would end, and the job would fail seconds before slurmctld marks the
node down and would have requeued it. So the survivor asks Slurm, for up to
``launch.node_failure_wait_s``, whether a node of this job stopped responding; if one did, it
requeues the job itself (``scontrol requeue``, what Slurm does on a node failure) and leaves
without a result. The requeued job resumes from the last complete checkpoint, in the same MLflow
run. A failure with every node healthy is a real error and is raised as it is.
"""

from __future__ import annotations

import os
import subprocess
import time

__all__ = ["lost_nodes", "requeue_after_node_failure"]

# sinfo states of a node that is gone for this job; "*" means it stopped answering slurmctld.
_GONE = ("down", "drain", "fail", "unk", "no_respond")


def lost_nodes(nodelist: str, wait_s: float, poll_s: float = 1.0) -> list[str]:
    """Nodes of ``nodelist`` that Slurm sees as not responding or down, waiting up to ``wait_s``
    for one to show (slurmctld notices a dead node within SlurmdTimeout); [] if none does."""
    deadline = time.monotonic() + wait_s
    while True:
        done = subprocess.run(
            ["sinfo", "--noheader", "--Node", f"--nodes={nodelist}", "--format=%N %T"],
            capture_output=True,
            text=True,
            check=False,
        )
        lost = sorted(
            {
                node
                for node, state in (
                    line.split() for line in done.stdout.splitlines() if len(line.split()) == 2
                )
                if state.endswith("*") or state.lower().startswith(_GONE)
            }
        )
        if lost or time.monotonic() >= deadline:
            return lost
        time.sleep(poll_s)


def requeue_after_node_failure(err: BaseException, wait_s: float) -> bool:
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
    # Slurm may have requeued it already (it does once the node is DOWN): then this one fails, harmlessly.
    subprocess.run(["scontrol", "requeue", job_id], capture_output=True, check=False)
    return True
