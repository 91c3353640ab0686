"""A real 2-node Slurm cluster on this machine (slurm/dev-cluster/start.sh --nodes 2): two hosts with
their own hostnames, addresses and slurmd, one CPU each; jobs span both, and the training job
must not notice whether its 2 ranks share a node or not.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import submitit

from tests.fixtures import slurm as slurm_fixtures
from tests.fixtures.datasets import fashion_mnist  # noqa: F401 (fixture)
from tests.fixtures.tiny_training import RUN, data_fixture, reference_fixture  # noqa: F401 (fixtures)
from tests.fixtures.training import SmallData, last_step, read_steps
from vigsp.train.outcome import TrainOutcome

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
DEV_CLUSTER = REPO / "slurm" / "dev-cluster"


@dataclass
class TwoNodes:
    directory: Path
    env: dict[str, str]  # SLURM_CONF and the ports: for every command aimed at this cluster
    nodes: tuple[str, str]

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cmd, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout, check=False
        )


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[TwoNodes]:
    slurm_fixtures.ensure_installed()
    directory = slurm_fixtures.fresh_directory()
    ports = slurm_fixtures.free_ports()
    prefix = f"t{ports['VIGSP_SLURM_PORT']}n"  # never the name of a developer's own dev-cluster node
    env = {**ports, "VIGSP_SLURM_NODES": "2", "VIGSP_SLURM_NODE_PREFIX": prefix}
    slurm_fixtures.forget_finished_jobs()  # this cluster's job ids repeat the session cluster's
    try:
        slurm_fixtures.run_script("start.sh", directory, env)
        conf = {"SLURM_CONF": str(directory / "etc" / "slurm.conf")}
        yield TwoNodes(directory, {**env, **conf}, (f"{prefix}1", f"{prefix}2"))
    finally:
        slurm_fixtures.forget_finished_jobs()
        slurm_fixtures.run_script("stop.sh", directory, env)
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        hosts = Path("/etc/hosts").read_text()
        shutil.rmtree(directory, ignore_errors=True)
        assert f"vigsp{ports['VIGSP_SLURM_PORT']}-" not in left, f"stop.sh left namespaces: {left}"
        assert prefix not in hosts, "stop.sh left /etc/hosts lines"


def test_each_node_is_a_host_of_its_own_and_names_resolve_everywhere(two_nodes: TwoNodes) -> None:
    a, b = two_nodes.nodes
    probe = f"import socket as s; print(s.gethostname(), s.gethostbyname({a!r}), s.gethostbyname({b!r}))"
    done = two_nodes.run("srun", "-N2", "-n2", "--time=2", sys.executable, "-c", probe)
    assert done.returncode == 0, done.stderr
    lines = sorted(done.stdout.split("\n")[:2])
    names = [line.split()[0] for line in lines]
    assert names == [a, b]
    addresses = {tuple(line.split()[1:]) for line in lines}
    assert len(addresses) == 1 and len(set(next(iter(addresses)))) == 2  # same answer on both, 2 addresses


def test_more_nodes_than_the_cluster_has_is_refused_before_queueing(
    two_nodes: TwoNodes, tmp_path: Path
) -> None:
    done = two_nodes.run(
        sys.executable, "-m", "vigsp.cli", "submit", str(REPO / "configs" / "tiny_test.yaml"),
        "--nodes=3", "--tasks-per-node=1", "--cpus-per-task=1", "--time=5", f"--folder={tmp_path / '%j'}",
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "3 nodes requested" in done.stderr and "Traceback" not in done.stderr
    assert two_nodes.run("squeue", "--noheader").stdout.strip() == ""


def _wait(job: submitit.Job[TrainOutcome], timeout_s: float) -> list[TrainOutcome]:
    deadline = time.monotonic() + timeout_s
    while not job.done(force_check=True):
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"job {job.job_id} not done after {timeout_s} s ({job.state})")
        time.sleep(1)
    return job.results()


def submit_on_two_nodes(
    two_nodes: TwoNodes, ws: Path, overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[subprocess.CompletedProcess[str], submitit.SlurmJob[TrainOutcome]]:
    """``vigsp submit`` of the tiny config as 2 nodes x 1 task, tracked in ``ws/mlflow.db``; submitit's
    own sacct/squeue calls are pointed at this cluster."""
    done = two_nodes.run(
        sys.executable, "-m", "vigsp.cli", "submit", str(REPO / "configs" / "tiny_test.yaml"), *overrides,
        f"run.output_dir={ws / 'runs'}", "run.name=r",
        "--nodes=2", "--tasks-per-node=1", "--cpus-per-task=1", "--time=20",
        f"--tracking-uri={tracking_uri(ws)}", f"--folder={ws / 'submitit' / '%j'}",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    job_id = next(line.split()[1].rstrip(":") for line in done.stdout.splitlines() if line.startswith("job "))
    for key, value in two_nodes.env.items():
        monkeypatch.setenv(key, value)
    return done, submitit.SlurmJob(folder=ws / "submitit" / "%j", job_id=job_id, tasks=(0, 1))


def tracking_uri(ws: Path) -> str:
    return f"sqlite:///{ws / 'mlflow.db'}"


def one_mlflow_run(ws: Path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri(ws))
    runs = client.search_runs([client.get_experiment_by_name("tiny-test").experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return client, runs[0]


def test_two_nodes_x_one_task_trains_bit_identically_to_one_node_x_two_tasks(
    two_nodes: TwoNodes, data: SmallData, reference, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = two_nodes.directory / "topology"
    done, job = submit_on_two_nodes(two_nodes, ws, [*data.overrides(), *RUN], monkeypatch)
    assert "2 node(s) x 1 rank(s)" in done.stdout
    results = _wait(job, 300)
    assert [r.status for r in results] == ["finished", "finished"]

    run_dir = ws / "runs" / "r"
    assert read_steps(run_dir) == reference  # bit for bit, and every step once
    logs = [(job._sub_jobs[rank].stdout() or "") for rank in (0, 1)]
    for rank, node in enumerate(two_nodes.nodes):
        assert f"rank {rank}/2" in logs[rank] and node in logs[rank], logs[rank][-2000:]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000020"
    _, run = one_mlflow_run(ws)
    assert run.info.status == "FINISHED"


def _job_field(two_nodes: TwoNodes, job_id: str, name: str) -> str:
    out = two_nodes.run("scontrol", "--oneliner", "show", "job", job_id).stdout
    return dict(f.split("=", 1) for f in out.split() if "=" in f).get(name, "")


def test_a_node_killed_mid_run_is_requeued_and_the_run_finishes_once(
    two_nodes: TwoNodes, data: SmallData, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = two_nodes.directory / "node-failure"
    # Long enough that the kill lands mid-run on an idle machine (~10 steps/s warm): 300 steps.
    epochs, steps_per_epoch = 30, 10  # 160 images / (2 ranks x batch 8)
    overrides = [*data.overrides(), *RUN, f"run.epochs={epochs}", "checkpoint.every_n_steps=10"]
    _, job = submit_on_two_nodes(two_nodes, ws, overrides, monkeypatch)
    job_id = job.job_id
    run_dir = ws / "runs" / "r"

    deadline = time.monotonic() + 240
    while last_step(run_dir) < 25:  # past the step-20 checkpoint, well before the end (300)
        assert time.monotonic() < deadline and not job.done(force_check=True), job_log(job)
        time.sleep(0.3)
    killed = time.monotonic()
    step_at_kill = last_step(run_dir)
    done = two_nodes.run(
        str(REPO / "slurm" / "dev-cluster" / "kill-node.sh"), two_nodes.nodes[1], str(two_nodes.directory)
    )
    assert done.returncode == 0, done.stderr
    while _job_field(two_nodes, job_id, "Restarts") in ("", "0"):
        assert time.monotonic() - killed < 120, f"not requeued 120 s after the node died:\n{job_log(job)}"
        time.sleep(0.5)
    requeued = time.monotonic()
    started = two_nodes.run(
        str(REPO / "slurm" / "dev-cluster" / "start.sh"), str(two_nodes.directory), timeout=120
    )
    assert started.returncode == 0, started.stderr
    back = time.monotonic()
    results = _wait(job, 600)
    finished = time.monotonic()
    print(
        f"node failure at step {step_at_kill}: requeued {requeued - killed:.0f} s after the kill, node back "
        f"{back - requeued:.0f} s later, run finished {finished - back:.0f} s after that"
    )
    assert [r.status for r in results] == ["finished", "finished"]
    assert [r.global_step for r in results] == [epochs * steps_per_epoch] * 2
    steps = [s[0] for s in read_steps(run_dir)]
    assert steps == list(range(1, epochs * steps_per_epoch + 1))  # every step once, none lost
    # Rank 0 saw its peer vanish, asked Slurm, and requeued at once (not after the node went DOWN).
    log = job_log(job)
    assert f"node(s) {two_nodes.nodes[1]} of job {job_id} failed" in log and "Requeueing the job" in log, log
    client, run = one_mlflow_run(ws)
    assert run.info.status == "FINISHED"
    logged = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(logged) == len(set(logged)) and max(logged) == epochs * steps_per_epoch


def job_log(job: submitit.Job[TrainOutcome]) -> str:
    return "\n".join(f"{j.stdout() or ''}\n{j.stderr() or ''}" for j in (job._sub_jobs or [job]))


def test_a_node_lost_for_good_resumes_on_the_node_left_with_every_step_once(
    two_nodes: TwoNodes, data: SmallData, monkeypatch: pytest.MonkeyPatch
) -> None:
    """launch.min_nodes=1: after its second node dies and stays down, the requeued job shrinks to the
    one node left and resumes there on 1 rank (elastic resume), the interrupted epoch included."""
    from vigsp.tracking.names import TAG_WORLD_SIZE_HISTORY

    ws = two_nodes.directory / "shrink"
    epochs = 12  # 10 steps per epoch on 2 ranks (160 images / 2 x 8), 20 on 1
    # Checkpoints every 7 steps and none at epoch ends: the resume falls mid-epoch.
    overrides = [
        *data.overrides(), *RUN, f"run.epochs={epochs}", "run.eval_every=100", "checkpoint.every_n_steps=7",
        "launch.min_nodes=1",
    ]  # fmt: skip
    done, job = submit_on_two_nodes(two_nodes, ws, overrides, monkeypatch)
    job_id, run_dir = job.job_id, ws / "runs" / "r"
    assert "2 node(s) x 1 rank(s)" in done.stdout and "down to 1 node(s) after a node failure" in done.stdout
    deadline = time.monotonic() + 240
    while last_step(run_dir) < 23:  # past the step-21 checkpoint
        assert time.monotonic() < deadline and not job.done(force_check=True), job_log(job)
        time.sleep(0.3)
    killed = two_nodes.run(
        str(REPO / "slurm" / "dev-cluster" / "kill-node.sh"), two_nodes.nodes[1], str(two_nodes.directory)
    )
    assert killed.returncode == 0, killed.stderr
    deadline = time.monotonic() + 420
    while (state := _job_field(two_nodes, job_id, "JobState")) != "COMPLETED":
        assert state not in ("FAILED", "CANCELLED", "TIMEOUT"), f"{state}:\n{job_log(job)}"
        assert time.monotonic() < deadline, (
            f"still {state} 420 s after the kill:\n"
            f"{two_nodes.run('scontrol', 'show', 'job', job_id).stdout}\n{job_log(job)[-3000:]}"
        )
        time.sleep(1)
    assert _job_field(two_nodes, job_id, "Restarts") != "0"
    assert _job_field(two_nodes, job_id, "NumNodes") == "1"  # the requeued job ran on the node left
    shrunk = f"1 node(s) of its partition are up: job {job_id} resumes on 1 node(s) instead of 2"
    assert shrunk in job_log(job)

    log = (run_dir / "train.log").read_text()
    resumed = [int(m) for m in re.findall(r"resumed from \S+ at step (\d+)", log)]
    assert resumed and resumed[-1] % 10, log[-3000:]  # a mid-epoch checkpoint
    at = resumed[-1]
    epoch, done_in_epoch = divmod(at, 10)
    # The rest of that epoch on 1 rank (2 x 8-image steps per 2-rank step left), then whole epochs.
    total = at + 2 * (10 - done_in_epoch) + (epochs - epoch - 1) * 20
    assert [s[0] for s in read_steps(run_dir)] == list(range(1, total + 1))
    _, run = one_mlflow_run(ws)
    assert run.data.tags[TAG_WORLD_SIZE_HISTORY] == f"2 rank(s) from step 0, 1 rank(s) from step {at}"
    assert run.info.status == "FINISHED"
    started = two_nodes.run(str(REPO / "slurm" / "dev-cluster" / "start.sh"), str(two_nodes.directory))
    assert started.returncode == 0, started.stderr  # the node back, for whatever runs next
