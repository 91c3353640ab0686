"""The local Slurm dev cluster, for real: submitit jobs on it, preemption, timeouts, requeue,
and the sinfo-based checks ``vigsp submit`` runs before queueing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
import submitit

from tests.fixtures import slurm as slurm_fixtures
from tests.fixtures.slurm import (
    FAKE_GPUS,
    SlurmCluster,
    ensure_installed,
    free_ports,
    run_script,
    sacct_state,
)
from vigsp.errors import UserError
from vigsp.launch.slurm_env import (
    JobRequest,
    Node,
    Partition,
    check_reachable,
    gpus_in_gres,
    parse_slurm_time,
    read_partitions,
    validate_request,
)

# Jobs unpickle this module's functions on the node; by value, they need not import the tests package.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

JOB_TIMEOUT_S = 150
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")


# ---------------------------------------------------------------- code that runs inside jobs


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)  # atomic, so a kill mid-write never leaves half a state file


def count_until_interrupted(state_file: str, extra_steps: int, wait_s: float) -> dict[str, Any]:
    """Count steps into ``state_file``. The first run counts until Slurm stops it (or gives up after
    ``wait_s``); every later run resumes from the saved count, adds ``extra_steps`` and returns."""
    path = Path(state_file)
    state = (
        json.loads(path.read_text())
        if path.exists()
        else {"runs": 0, "steps": 0, "starts": [], "resumed": []}
    )
    state["runs"] += 1
    state["starts"].append(time.time())
    state["resumed"].append(state["steps"])
    _save(path, state)
    steps = extra_steps if state["runs"] > 1 else None
    deadline = time.monotonic() + wait_s
    while (steps is None and time.monotonic() < deadline) or (steps is not None and steps > 0):
        time.sleep(0.2)
        state["steps"] += 1
        steps = None if steps is None else steps - 1
        _save(path, state)
    return state


class CheckpointableCounter(submitit.helpers.Checkpointable):
    """submitit requeues it on USR2 (preemption or timeout) with the same arguments."""

    def __call__(self, state_file: str, extra_steps: int, wait_s: float) -> dict[str, Any]:
        return count_until_interrupted(state_file, extra_steps, wait_s)


def timed_sleep(seconds: float) -> tuple[float, float]:
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


def gloo_all_reduce() -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    # overwrite=True: the test hands the job a MASTER_PORT (read, and kept, by the constructor).
    env = submitit.helpers.TorchDistributedEnvironment().export(overwrite=True)
    dist.init_process_group("gloo", init_method="env://")
    try:
        tensor = torch.arange(4, dtype=torch.float64) * (env.rank + 1)
        dist.all_reduce(tensor)
        return {
            "rank": env.rank,
            "world_size": env.world_size,
            "local_rank": env.local_rank,
            "torch_env": {
                k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
            },
            "sum": tensor.tolist(),
        }
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- helpers on the test side


def executor(cluster: SlurmCluster, name: str, **parameters: Any) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=cluster.log_folder(name), cluster="slurm", slurm_max_num_timeout=3)
    ex.update_parameters(**parameters)
    return ex


def job_log(job: submitit.Job) -> str:
    return f"{job.stdout() or ''}\n{job.stderr() or ''}"


def wait_until(condition: Callable[[], bool], what: str, job: submitit.Job, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if job.done():
            pytest.fail(f"job {job.job_id} ended before {what}:\n{job_log(job)}")
        if time.monotonic() > deadline:
            job.cancel(check=False)  # free the node for the next tests
            pytest.fail(f"{what} did not happen within {timeout_s}s (job {job.job_id} is {job.state})")
        time.sleep(0.2)


def results(job: submitit.Job, timeout_s: float = JOB_TIMEOUT_S) -> list[Any]:
    """job.results() (one per task) with a deadline: a stuck job fails the test instead of hanging it."""
    deadline = time.monotonic() + timeout_s
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"job {job.job_id} not done after {timeout_s}s (state {job.state}):\n{job_log(job)}")
        time.sleep(0.5)
    return job.results()


def result(job: submitit.Job, timeout_s: float = JOB_TIMEOUT_S) -> Any:
    (only,) = results(job, timeout_s)
    return only


def read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"runs": 0, "steps": 0}


def queued_job_ids() -> list[str]:
    out = subprocess.run(["squeue", "--noheader", "--format=%i"], capture_output=True, text=True, check=True)
    return out.stdout.split()


def sbatch_test_only(*args: str) -> subprocess.CompletedProcess[str]:
    """Slurm's own verdict on a request, without queueing anything."""
    return subprocess.run(
        ["sbatch", "--test-only", *args, "--wrap", "true"], capture_output=True, text=True, check=False
    )


# ---------------------------------------------------------------- the cluster scripts


def _pids(directory: Path) -> dict[str, int]:
    return {name: int((directory / "run" / f"{name}.pid").read_text()) for name in DAEMONS}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_start_and_stop_are_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_installed()
    directory = slurm_fixtures.fresh_directory()  # its own cluster, on its own ports, beside the session's
    env = free_ports()
    try:
        first = run_script("start.sh", directory, env)
        assert first.stdout.strip() == f"export SLURM_CONF={directory.resolve()}/etc/slurm.conf"
        pids = _pids(directory)
        second = run_script("start.sh", directory, env)
        assert second.stderr.count("already running") == len(DAEMONS)
        assert _pids(directory) == pids
        assert all(_alive(pid) for pid in pids.values())

        run_script("stop.sh", directory, env)
        run_script("stop.sh", directory, env)
        assert not any(_alive(pid) for pid in pids.values())

        monkeypatch.setenv("SLURM_CONF", str(directory / "etc" / "slurm.conf"))
        with pytest.raises(UserError, match="not reachable"):
            check_reachable()

        run_script("start.sh", directory, env)
        assert set(_pids(directory).values()).isdisjoint(pids.values())
        check_reachable()
        state = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%R:%T"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert state == ["debug:idle", "urgent:idle"]  # one node, in both partitions
    finally:
        run_script("stop.sh", directory, env)
        shutil.rmtree(directory)


@pytest.mark.slurm
def test_check_reachable_names_a_missing_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "nope.conf"))
    with pytest.raises(UserError, match=r"nope\.conf does not exist"):
        check_reachable()


# ---------------------------------------------------------------- jobs on the session's cluster


@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_two_task_job_runs_a_gloo_all_reduce(
    slurm_cluster: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # submitit derives MASTER_PORT from the job id, in 20000-60000: with ids restarting at 1 that is
    # the same port every session, inside the ephemeral range where a local connection took it once.
    # TorchDistributedEnvironment reads a MASTER_PORT the job inherits, so hand it a free one.
    port = slurm_fixtures.free_port()
    monkeypatch.setenv("MASTER_PORT", str(port))
    ex = executor(
        slurm_cluster,
        "gloo",
        timeout_min=20,
        nodes=1,
        tasks_per_node=2,
        cpus_per_task=1,
        slurm_srun_args=["--kill-on-bad-exit=1"],  # a rank that fails ends the job, not a hung peer
    )
    job = ex.submit(gloo_all_reduce)
    outputs = sorted(results(job), key=lambda r: r["rank"])

    assert [r["rank"] for r in outputs] == [0, 1]
    assert [r["local_rank"] for r in outputs] == [0, 1]
    for out in outputs:
        assert out["world_size"] == 2
        assert out["torch_env"]["RANK"] == str(out["rank"])
        assert out["torch_env"]["WORLD_SIZE"] == "2"
        assert out["torch_env"]["LOCAL_RANK"] == str(out["local_rank"])
        assert out["torch_env"]["MASTER_ADDR"] == outputs[0]["torch_env"]["MASTER_ADDR"]
        assert out["torch_env"]["MASTER_PORT"] == str(port)
        # rank r contributes arange(4) * (r + 1): the sum over both ranks is arange(4) * 3.
        assert out["sum"] == [0.0, 3.0, 6.0, 9.0]


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_preempted_checkpointable_job_is_requeued_and_resumes(slurm_cluster: SlurmCluster) -> None:
    whole_node = slurm_cluster.partitions["debug"].max_cpus
    state_file = slurm_cluster.directory / "preempt-state.json"
    # timeout_min >= 20: submitit counts a USR2 within the first 10 minutes as preemption, not timeout.
    low = executor(slurm_cluster, "low", slurm_partition="debug", timeout_min=20, cpus_per_task=whole_node)
    job = low.submit(CheckpointableCounter(), str(state_file), 5, 120.0)
    wait_until(lambda: read_state(state_file)["steps"] >= 3, "the low-priority job counting", job)

    high = executor(
        slurm_cluster, "urgent", slurm_partition="urgent", timeout_min=20, cpus_per_task=whole_node
    )
    urgent = high.submit(timed_sleep, 1.0)
    urgent_start, urgent_end = result(urgent)
    state = result(job)

    assert state["runs"] == 2, state
    steps_before = state["resumed"][1]
    assert steps_before >= 3  # the second run started from the saved count, not from zero
    assert state["steps"] == steps_before + 5
    # The node is big enough for one of them only: the urgent job ran while the low one was out.
    assert state["starts"][0] < urgent_start
    assert state["starts"][1] >= urgent_end
    assert "this job is preempted" in job_log(job)


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_job_at_its_time_limit_is_requeued_and_finishes(slurm_cluster: SlurmCluster) -> None:
    state_file = slurm_cluster.directory / "timeout-state.json"
    # --time=1 minute with USR2 50 s before the end: the signal comes about 10 s in.
    ex = executor(slurm_cluster, "timeout", timeout_min=1, slurm_signal_delay_s=50, cpus_per_task=1)
    job = ex.submit(CheckpointableCounter(), str(state_file), 3, 120.0)
    state = result(job)

    assert state["runs"] == 2, state
    assert state["resumed"][1] > 0
    assert state["steps"] == state["resumed"][1] + 3
    assert "this job is timed-out" in job_log(job)


@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_scontrol_requeue_restarts_from_saved_state(slurm_cluster: SlurmCluster) -> None:
    state_file = slurm_cluster.directory / "requeue-state.json"
    ex = executor(slurm_cluster, "requeue", timeout_min=20, cpus_per_task=1)
    job = ex.submit(count_until_interrupted, str(state_file), 4, 120.0)  # a plain function: no checkpoint()
    wait_until(lambda: read_state(state_file)["steps"] >= 3, "the job counting", job)

    subprocess.run(["scontrol", "requeue", job.job_id], check=True, capture_output=True)
    state = result(job)

    assert state["runs"] == 2, state
    assert state["resumed"][1] >= 3
    assert state["steps"] == state["resumed"][1] + 4


TEMPLATES = Path(__file__).resolve().parents[1] / "slurm" / "templates"

# Stands in for `vigsp train` (which is not what is under test here): records how each rank was
# started, and on USR2 "checkpoints" and exits 75 as `vigsp train` does; a restart finds the checkpoint.
FAKE_TRAINER = """#!/bin/bash
run=${SLURM_RESTART_COUNT:-0}
printf '%s\\n' "$@" > "args.$RANK.$run"
env | grep -E '^(RANK|LOCAL_RANK|NODE_RANK|WORLD_SIZE|MASTER_ADDR|MASTER_PORT)=' | sort > "env.$RANK.$run"
[[ -e checkpoint.$RANK ]] && exit 0
trap 'touch checkpoint.$RANK; exit 75' USR2
touch "started.$RANK"
# Short sleeps: Slurm signals the whole task, sleep included, and bash runs the trap once sleep ends.
for _ in $(seq 600); do sleep 0.1; done
exit 1
"""


def test_sbatch_templates_differ_only_in_their_header() -> None:
    def body(name: str) -> str:
        return (TEMPLATES / name).read_text().split("set -euo pipefail", 1)[1]

    assert body("train-single-node.sbatch") == body("train-multi-node.sbatch")


@pytest.mark.slurm
@pytest.mark.timeout(180)
def test_sbatch_template_sets_ranks_and_requeues_on_usr2(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "vigsp").write_text(FAKE_TRAINER)
    (bin_dir / "vigsp").chmod(0o755)
    workdir = slurm_cluster.directory / "template-run"  # the job writes here, so searchable by all
    workdir.mkdir()
    submit = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--nodes=1",
            "--ntasks-per-node=2",
            f"--gpus-per-node={FAKE_GPUS}",
            "--cpus-per-task=1",
            "--time=10",
            str(TEMPLATES / "train-multi-node.sbatch"),
            "configs/tiny.yaml",
            "model.width=64",
            "run.name=two words",
        ],
        cwd=workdir,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        check=True,
    )
    job_id = submit.stdout.strip()
    deadline = time.monotonic() + 60
    while not all((workdir / f"started.{rank}").exists() for rank in (0, 1)):
        assert time.monotonic() < deadline, f"ranks did not start: {sacct_state(job_id)}"
        time.sleep(0.2)

    # What Slurm sends before the time limit or on preemption (--signal=B:USR2@...): to the batch shell.
    subprocess.run(["scancel", "--batch", "--signal=USR2", job_id], check=True)
    deadline = time.monotonic() + 90
    log_file = workdir / f"vigsp-train-{job_id}.out"
    while (state := sacct_state(job_id)) != "COMPLETED":
        assert state in ("RUNNING", "REQUEUED", "PENDING") and time.monotonic() < deadline, (
            f"job {job_id} is {state!r}, not COMPLETED; its log:\n{log_file.read_text()}"
        )
        time.sleep(0.5)

    port = str(20000 + int(job_id) % 12000)
    for rank in (0, 1):
        assert (workdir / f"checkpoint.{rank}").exists()  # every rank got USR2
        for run in (0, 1):  # the first run and the requeued one
            assert (workdir / f"args.{rank}.{run}").read_text().splitlines() == [
                "train",
                "configs/tiny.yaml",
                "model.width=64",
                "run.name=two words",
            ]
            env = dict(
                line.split("=", 1) for line in (workdir / f"env.{rank}.{run}").read_text().splitlines()
            )
            assert env == {
                "LOCAL_RANK": str(rank),
                "MASTER_ADDR": "localhost",
                "MASTER_PORT": port,
                "NODE_RANK": "0",
                "RANK": str(rank),
                "WORLD_SIZE": "2",
            }
    log = log_file.read_text()
    assert "requeueing job" in log and "(restart 1)" in log


@pytest.mark.slurm
def test_requests_that_cannot_run_are_rejected_before_queueing(slurm_cluster: SlurmCluster) -> None:
    parts = read_partitions()
    cpus = os.cpu_count()
    assert set(parts) == {"debug", "urgent"}
    assert parts["debug"].is_default and not parts["urgent"].is_default
    assert parts["debug"].max_time_min == 24 * 60 and parts["urgent"].max_time_min == 4 * 60
    for part in parts.values():
        assert (part.max_cpus, part.max_gpus, len(part.nodes)) == (cpus, FAKE_GPUS, 1)
    queued = queued_job_ids()

    fits = JobRequest(partition="urgent", tasks_per_node=cpus, gpus_per_node=FAKE_GPUS, time_min=60)
    assert validate_request(fits, parts).name == "urgent"
    assert validate_request(JobRequest(), parts).name == "debug"
    assert (
        sbatch_test_only("--partition=urgent", f"--ntasks={cpus}", f"--gpus-per-node={FAKE_GPUS}").returncode
        == 0
    )

    with pytest.raises(
        UserError, match=r"unknown Slurm partition 'gpu-a100'(.|\n)*debug \[default\](.|\n)*urgent"
    ):
        validate_request(JobRequest(partition="gpu-a100"), parts)
    assert sbatch_test_only("--partition=gpu-a100").returncode != 0

    with pytest.raises(UserError, match=f"{FAKE_GPUS + 1} GPUs per node requested.*at most {FAKE_GPUS}"):
        validate_request(JobRequest(gpus_per_node=FAKE_GPUS + 1), parts)
    assert sbatch_test_only(f"--gpus-per-node={FAKE_GPUS + 1}").returncode != 0

    with pytest.raises(UserError, match=f"{cpus + 1} CPUs per node requested.*at most {cpus}"):
        validate_request(JobRequest(cpus_per_task=cpus + 1), parts)
    assert sbatch_test_only(f"--cpus-per-task={cpus + 1}").returncode != 0

    # Slurm itself would queue this one and leave it pending forever (PartitionTimeLimit).
    with pytest.raises(UserError, match="time 05:00:00 requested, over its limit of 04:00:00"):
        validate_request(JobRequest(partition="urgent", time_min=300), parts)

    assert queued_job_ids() == queued


# ---------------------------------------------------------------- parsing, no cluster needed


@pytest.mark.parametrize(
    ("text", "minutes"),
    [
        ("30", 30),
        ("30:15", 31),
        ("4:00:00", 240),
        ("1-00:00:00", 1440),
        ("2-12", 3600),
        ("1-01:30", 1530),
        ("infinite", None),
        ("UNLIMITED", None),
    ],
)
def test_parse_slurm_time(text: str, minutes: int | None) -> None:
    assert parse_slurm_time(text) == minutes


def test_parse_slurm_time_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a Slurm time"):
        parse_slurm_time("4h")


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [
        ("(null)", 0),
        ("gpu:2", 2),
        ("gpu:a100:4(S:0-1)", 4),
        ("gpu:a100:4(S:0),gpu:v100:2(S:1)", 6),
        ("shard:8,gpu:1", 1),
        ("mps:100", 0),
    ],
)
def test_gpus_in_gres(gres: str, gpus: int) -> None:
    assert gpus_in_gres(gres) == gpus


def test_multi_node_request_needs_enough_nodes_that_fit() -> None:
    big, small = (
        Node("big", cpus=64, memory_mb=512_000, gpus=8),
        Node("small", cpus=16, memory_mb=64_000, gpus=2),
    )
    part = Partition("gpu", is_default=True, available=True, max_time_min=None, nodes=(big, big, small))
    assert validate_request(JobRequest(nodes=3, gpus_per_node=2), {"gpu": part}) is part
    with pytest.raises(UserError, match="3 nodes requested, but only 2 of its nodes have 4 GPUs"):
        validate_request(JobRequest(nodes=3, gpus_per_node=4), {"gpu": part})
    with pytest.raises(UserError, match="600 GiB per node requested"):
        validate_request(JobRequest(memory_gb=600), {"gpu": part})


def test_no_partitions_is_a_clear_error() -> None:
    with pytest.raises(UserError, match="lists no partitions"):
        validate_request(JobRequest(), {})
