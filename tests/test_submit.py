"""``vigsp submit`` for real: the CLI queues the real training engine on the local Slurm cluster
(tests/fixtures/slurm.py), on a few Fashion-MNIST images, and MLflow's sqlite store is read back.

Every job runs ``configs/tiny_test.yaml`` on 8 training images per class (80 images): with 2 ranks
of batch 8 an epoch is 5 optimizer steps. Jobs start in about 25 s (imports, DeepSpeed, MLflow).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import submitit

from tests.fixtures import slurm as slurm_fixtures
from tests.fixtures.datasets import fashion_mnist, write_file_list
from tests.fixtures.slurm import FAKE_GPUS, SlurmCluster, sacct_state
from vigsp.data.fashion_mnist import PrepareResult
from vigsp.errors import UserError
from vigsp.launch.submit import memory_gb
from vigsp.launch.sweep import expand_sweep, plan_runs
from vigsp.train.outcome import TrainOutcome

_ = fashion_mnist  # fixture, used through tiny_data

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny_test.yaml"
VIGSP = [sys.executable, "-m", "vigsp.cli"]
JOB_TIMEOUT_S = 240
STEPS_PER_EPOCH_2_RANKS = 5  # 80 images / (2 ranks x batch 8)
# Jobs that get stopped (preemption, requeue, time limit) must still be training when the stop
# arrives, seconds after their first checkpoint: a warm run does ~10-13 steps/s on 2 idle cores,
# so these runs last about half a minute (300 steps) instead of the one second of a few epochs.
LONG_RUN_EPOCHS = 60
LONG_RUN_CHECKPOINTS = {"checkpoint.every_n_steps": 20}


@dataclass
class Workspace:
    """Where one test's jobs write: run dirs, MLflow store, submitit folder. Under the cluster's
    directory, which every user can search (slurmstepd opens the log files)."""

    root: Path
    data: list[str]

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def folder(self) -> Path:
        return self.root / "submitit" / "%j"

    def overrides(self, **extra: Any) -> list[str]:
        return [*self.data, f"run.output_dir={self.root / 'runs'}", *(f"{k}={v}" for k, v in extra.items())]


@pytest.fixture(scope="module")
def tiny_data(fashion_mnist: PrepareResult, slurm_cluster: SlurmCluster) -> list[str]:
    lists = slurm_cluster.directory / "tiny-lists"
    lists.mkdir(exist_ok=True)
    train = write_file_list(lists / "train.txt", fashion_mnist.out / "train", per_class=8)
    val = write_file_list(lists / "val.txt", fashion_mnist.out / "val", per_class=2)
    return [
        f"data.train_dir={fashion_mnist.out / 'train'}",
        f"data.val_dir={fashion_mnist.out / 'val'}",
        f"data.train_list={train}",
        f"data.val_list={val}",
        "checkpoint.every_n_steps=2",
        "run.max_steps=null",
    ]


_counter = iter(range(10_000))


@pytest.fixture
def workspace(slurm_cluster: SlurmCluster, tiny_data: list[str]) -> Iterator[Workspace]:
    root = slurm_cluster.directory / f"submit-{next(_counter)}"
    root.mkdir()
    yield Workspace(root, tiny_data)
    # A test that failed half-way must not leave a job holding the node for the next one.
    left = subprocess.run(["squeue", "--noheader", "--format=%i"], capture_output=True, text=True).stdout
    if left.split():
        subprocess.run(["scancel", *left.split()], check=False, capture_output=True)


def vigsp_submit(
    ws: Workspace, *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*VIGSP, "submit", *args],
        cwd=ws.root,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S if "--local" in args else 60,  # --local waits for its job
        check=False,
    )
    if check:
        assert done.returncode == 0, f"vigsp submit failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"
    return done


def job_ids(stdout: str) -> list[str]:
    return re.findall(r"^job (\S+): run ", stdout, flags=re.MULTILINE)


def slurm_job(ws: Workspace, job_id: str, tasks: int = 1) -> submitit.SlurmJob[TrainOutcome]:
    return submitit.SlurmJob(folder=ws.folder, job_id=job_id, tasks=tuple(range(tasks)))


def job_log(job: submitit.Job[Any]) -> str:
    jobs = job._sub_jobs or [job]
    return "\n".join(f"{j.stdout() or ''}\n{j.stderr() or ''}" for j in jobs)


def wait_done(job: submitit.Job[Any], timeout_s: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not job.done(force_check=True):
        if time.monotonic() > deadline:
            job.cancel(check=False)  # free the node for the next tests
            pytest.fail(f"job {job.job_id} not done after {timeout_s}s ({job.state}):\n{job_log(job)}")
        time.sleep(1)


def outcomes(job: submitit.Job[TrainOutcome]) -> list[TrainOutcome]:
    wait_done(job)
    try:
        return job.results()
    except Exception as err:
        pytest.fail(f"job {job.job_id} failed: {err}\n{job_log(job)}")


def wait_for(
    condition: Callable[[], bool], what: str, job: submitit.Job[Any], timeout_s: float = 120
) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if job.done(force_check=True):
            pytest.fail(f"job {job.job_id} ended before {what}:\n{job_log(job)}")
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(f"{what} did not happen within {timeout_s}s (job {job.job_id}):\n{job_log(job)}")
        time.sleep(0.5)


def checkpoints(run_dir: Path) -> list[int]:
    return sorted(int(p.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*"))


def scontrol_job(job_id: str) -> dict[str, str]:
    out = subprocess.run(
        ["scontrol", "--oneliner", "show", "job", job_id], capture_output=True, text=True, check=True
    ).stdout
    return dict(field.split("=", 1) for field in out.split() if "=" in field)


def mlflow_runs(ws: Workspace, experiment: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=ws.tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r} in {ws.tracking_uri}"
    return client.search_runs([exp.experiment_id])


def assert_one_clean_mlflow_run(ws: Workspace, run_name: str, final_step: int) -> Any:
    """Exactly one run, finished, whose step metrics go 1..final_step once each (no duplicates
    from a resumed run re-logging steps)."""
    from mlflow import MlflowClient

    runs = mlflow_runs(ws, "tiny-test")
    assert [r.info.run_name for r in runs] == [run_name]
    run = runs[0]
    assert run.info.status == "FINISHED"
    client = MlflowClient(tracking_uri=ws.tracking_uri)
    step_metrics = [k for k in run.data.metrics if k.startswith("train/")]
    assert step_metrics, run.data.metrics
    for key in step_metrics:
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(steps) == len(set(steps)), f"{key} logged twice at some step: {steps}"
        assert max(steps) <= final_step
    return run


def known_job_ids() -> set[str]:
    """Every job slurmctld still remembers, finished ones included (for MinJobAge)."""
    out = subprocess.run(
        ["squeue", "--noheader", "--states=all", "--format=%i"], capture_output=True, text=True, check=True
    )
    return set(out.stdout.split())


def free_port_env() -> dict[str, str]:
    # submitit derives MASTER_PORT from the job id, and ids restart at 1 for every test cluster;
    # TorchDistributedEnvironment keeps an inherited one, so hand 2-rank jobs a free port.
    return {"MASTER_PORT": str(slurm_fixtures.free_port())}


# ---------------------------------------------------------------- jobs on the cluster


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(360)
def test_two_rank_job_trains_and_logs_one_mlflow_run(workspace: Workspace) -> None:
    ws = workspace
    done = vigsp_submit(
        ws,
        str(TINY),
        *ws.overrides(**{"run.name": "two-ranks", "run.epochs": 1}),
        "--tasks-per-node=2",
        "--cpus-per-task=1",
        "--time=20",
        f"--tracking-uri={ws.tracking_uri}",
        f"--folder={ws.folder}",
        env=free_port_env(),
    )
    (job_id,) = job_ids(done.stdout)
    run_dir = ws.root / "runs" / "two-ranks"
    assert f"run dir: {run_dir}" in done.stdout
    assert f"mlflow:  {ws.tracking_uri} (experiment tiny-test)" in done.stdout
    assert "on partition debug, 1 node(s) x 2 rank(s)" in done.stdout
    job = slurm_job(ws, job_id, tasks=2)
    assert f"stdout:  {job._sub_jobs[0].paths.stdout}" in done.stdout
    assert f"stderr:  {job._sub_jobs[0].paths.stderr}" in done.stdout

    results = outcomes(job)
    assert [r.status for r in results] == ["finished", "finished"]
    assert [r.global_step for r in results] == [STEPS_PER_EPOCH_2_RANKS] * 2
    assert results[0].mlflow_run_id is not None and results[0].tracking_uri == ws.tracking_uri
    run = assert_one_clean_mlflow_run(ws, "two-ranks", STEPS_PER_EPOCH_2_RANKS)
    assert run.info.run_id == results[0].mlflow_run_id
    assert run.data.tags["vigsp.world_size"] == "2"
    log = job_log(job)
    assert "rank 0/2 on cpu, master localhost:" in log and "rank 1/2 on cpu" in log


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_preempted_job_resumes_from_its_checkpoint_in_the_same_mlflow_run(
    workspace: Workspace, slurm_cluster: SlurmCluster
) -> None:
    ws = workspace
    epochs = LONG_RUN_EPOCHS
    total = epochs * STEPS_PER_EPOCH_2_RANKS
    whole_node = slurm_cluster.partitions["debug"].max_cpus
    # --time 20: submitit counts a USR2 in the first 10 minutes of a 20-minute job as a preemption.
    done = vigsp_submit(
        ws,
        str(TINY),
        *ws.overrides(**{"run.name": "preempted", "run.epochs": epochs, **LONG_RUN_CHECKPOINTS}),
        "--tasks-per-node=2",
        f"--cpus-per-task={whole_node // 2}",
        "--partition=debug",
        "--time=20",
        f"--tracking-uri={ws.tracking_uri}",
        f"--folder={ws.folder}",
        env=free_port_env(),
    )
    (job_id,) = job_ids(done.stdout)
    job = slurm_job(ws, job_id, tasks=2)
    run_dir = ws.root / "runs" / "preempted"
    wait_for(lambda: bool(checkpoints(run_dir)), "a first checkpoint", job, timeout_s=150)

    # A job in the higher-tier partition that needs the whole node: Slurm preempts ours for it.
    urgent = subprocess.run(
        ["sbatch", "--parsable", "--partition=urgent", "--exclusive", "--wrap", "sleep 1"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    results = outcomes(job)
    assert [r.status for r in results] == ["finished", "finished"]
    assert [r.global_step for r in results] == [total, total]  # as many steps as without preemption
    log = job_log(job)
    assert "this job is preempted" in log
    resumed = [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", log)]
    assert resumed and 0 < resumed[0] < total, log
    assert scontrol_job(job_id).get("Restarts") == "1"
    state = subprocess.run(
        ["sacct", "--noheader", "--allocations", "--format=State", "--jobs", urgent],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert state == ["COMPLETED"]
    assert_one_clean_mlflow_run(ws, "preempted", total)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(360)
def test_scontrol_requeue_resumes_in_the_same_mlflow_run(
    workspace: Workspace, slurm_cluster: SlurmCluster
) -> None:
    """`scontrol requeue` sends SIGTERM, no USR2: the engine saves, the job leaves no result, and
    Slurm starts the same submission again, which resumes."""
    ws = workspace
    epochs = LONG_RUN_EPOCHS // 2  # one rank takes twice the steps per epoch: the same 300 steps
    total = epochs * 2 * STEPS_PER_EPOCH_2_RANKS  # one rank
    done = vigsp_submit(
        ws,
        str(TINY),
        *ws.overrides(**{"run.name": "requeued", "run.epochs": epochs, **LONG_RUN_CHECKPOINTS}),
        "--tasks-per-node=1",
        f"--cpus-per-task={slurm_cluster.partitions['debug'].max_cpus}",
        "--time=20",
        f"--tracking-uri={ws.tracking_uri}",
        f"--folder={ws.folder}",
    )
    (job_id,) = job_ids(done.stdout)
    job = slurm_job(ws, job_id)
    run_dir = ws.root / "runs" / "requeued"
    wait_for(lambda: bool(checkpoints(run_dir)), "a first checkpoint", job, timeout_s=150)
    subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)

    (result,) = outcomes(job)
    assert result.status == "finished" and result.global_step == total
    assert scontrol_job(job_id).get("Restarts") == "1"
    log = job_log(job)
    resumed = [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", log)]
    assert resumed and 0 < resumed[0] < total, log
    assert_one_clean_mlflow_run(ws, "requeued", total)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_job_at_its_time_limit_is_requeued_and_finishes(
    workspace: Workspace, slurm_cluster: SlurmCluster
) -> None:
    ws = workspace
    # slurmctld sends the USR2 up to one periodic check (30 s) early, so anywhere in the first 30 s:
    # while the job starts (submitit requeues it at once) or mid-run (the engine saves first). The
    # run must outlast those 30 s on a warm machine: 800 steps, about a minute. Mid-run stops are
    # asserted by the other stop tests (preemption, scontrol requeue, sbatch).
    epochs = 80
    total = epochs * 2 * STEPS_PER_EPOCH_2_RANKS  # one rank: twice the steps per epoch
    # One minute, USR2 30 s before its end. Every USR2 of a job this short counts as a timeout.
    done = vigsp_submit(
        ws,
        str(TINY),
        *ws.overrides(**{"run.name": "timed-out", "run.epochs": epochs, **LONG_RUN_CHECKPOINTS}),
        "--tasks-per-node=1",
        f"--cpus-per-task={slurm_cluster.partitions['debug'].max_cpus}",
        "--time=1",
        "--signal-delay-s=30",
        "--max-num-timeout=2",
        f"--tracking-uri={ws.tracking_uri}",
        f"--folder={ws.folder}",
    )
    (job_id,) = job_ids(done.stdout)
    job = slurm_job(ws, job_id)
    wait_for(lambda: scontrol_job(job_id).get("Restarts") == "1", "the requeue at the time limit", job)
    # The requeued run has a minute again, half of it gone starting up on 2 busy cores: give it
    # the time to finish (what a user would do: `scontrol update` or a longer --time).
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=10"], check=True)

    (result,) = outcomes(job)
    assert result.status == "finished" and result.global_step == total
    log = job_log(job)
    assert "this job is timed-out" in log
    assert "1 remaining timeouts" in log  # --max-num-timeout 2, one spent
    assert_one_clean_mlflow_run(ws, "timed-out", total)


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(360)
def test_sweep_of_two_configs_runs_as_one_array_in_one_experiment(workspace: Workspace) -> None:
    ws = workspace
    slic = ws.root / "tiny_slic.yaml"
    grid = ws.root / "tiny_grid.yaml"
    slic.write_text(f"base: {TINY}\n")
    # ViG-SP against ViG-SP-Grid, as in the paper's table, in miniature.
    grid.write_text(
        f"base: {TINY}\nmodel:\n  name: vig_sp_grid_tiny\ndata:\n  superpixel:\n    method: grid\n"
    )
    done = vigsp_submit(
        ws,
        *ws.overrides(**{"run.max_steps": 3, "tracking.experiment_name": "sweep"}),
        "--sweep",
        str(slic),
        str(grid),
        "--tasks-per-node=1",
        "--cpus-per-task=1",
        "--time=20",
        f"--tracking-uri={ws.tracking_uri}",
        f"--folder={ws.folder}",
    )
    ids = job_ids(done.stdout)
    array_id = ids[0].split("_")[0]
    assert ids == [f"{array_id}_0", f"{array_id}_1"]
    assert f"job array {array_id}: 2 runs" in done.stdout
    jobs = [slurm_job(ws, i) for i in ids]
    results = [outcomes(j)[0] for j in jobs]
    assert [(r.status, r.global_step, r.run_dir.name) for r in results] == [
        ("finished", 3, "tiny_slic"),
        ("finished", 3, "tiny_grid"),
    ]
    runs = mlflow_runs(ws, "sweep")
    assert sorted(r.info.run_name for r in runs) == ["tiny_grid", "tiny_slic"]
    assert {r.data.params["data.superpixel.method"] for r in runs} == {"slic", "grid"}

    compare = subprocess.run(
        [*VIGSP, "compare", "--experiment", "sweep", "--tracking-uri", ws.tracking_uri],
        capture_output=True,
        text=True,
        check=False,
    )
    assert compare.returncode == 0, compare.stderr
    assert "tiny_slic" in compare.stdout and "tiny_grid" in compare.stdout


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_plain_sbatch_template_runs_vigsp_train_and_requeues_it(workspace: Workspace) -> None:
    """The no-submitit way: slurm/templates with the real `vigsp train`, stopped by USR2 as before
    a time limit, requeued by the script on the trainer's exit code, resumed in one MLflow run."""
    ws = workspace
    epochs = LONG_RUN_EPOCHS
    total = epochs * STEPS_PER_EPOCH_2_RANKS
    venv_bin = Path(sys.executable).parent  # where `vigsp` is: sbatch passes PATH on to the job
    job_id = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--nodes=1",
            "--ntasks-per-node=2",
            f"--gpus-per-node={FAKE_GPUS}",  # the template's header asks for GPUs; these are stand-ins
            "--cpus-per-task=1",
            "--time=10",
            str(REPO / "slurm" / "templates" / "train-single-node.sbatch"),
            str(TINY),
            *ws.overrides(**{"run.name": "sbatch", "run.epochs": epochs, **LONG_RUN_CHECKPOINTS}),
            f"tracking.tracking_uri={ws.tracking_uri}",
        ],
        cwd=ws.root,
        env={**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    log_file = ws.root / f"vigsp-train-{job_id}.out"
    run_dir = ws.root / "runs" / "sbatch"
    deadline = time.monotonic() + 150
    while not checkpoints(run_dir):
        state = sacct_state(job_id)
        assert state in ("PENDING", "RUNNING", "") and time.monotonic() < deadline, (
            f"job {job_id} is {state!r} without a checkpoint:\n"
            f"{log_file.read_text() if log_file.exists() else '(no log)'}"
        )
        time.sleep(0.5)

    # What --signal=B:USR2@300 does before the time limit: USR2 to the batch script.
    subprocess.run(["scancel", "--batch", "--signal=USR2", job_id], check=True)
    deadline = time.monotonic() + 240
    while (state := sacct_state(job_id)) != "COMPLETED":
        assert state in ("RUNNING", "REQUEUED", "PENDING") and time.monotonic() < deadline, (
            f"job {job_id} is {state!r}, not COMPLETED; its log:\n{log_file.read_text()}"
        )
        time.sleep(1)
    log = log_file.read_text()
    assert "requeueing job" in log and "(restart 1)" in log, log
    resumed = [int(s) for s in re.findall(r"resumed from \S+ at step (\d+)", log)]
    assert resumed and 0 < resumed[0] < total, log
    assert f"finished: {total} steps" in log, log
    assert_one_clean_mlflow_run(ws, "sbatch", total)


@pytest.mark.slurm
@pytest.mark.timeout(180)
def test_bad_requests_fail_before_queueing(workspace: Workspace, slurm_cluster: SlurmCluster) -> None:
    ws = workspace
    before = known_job_ids()
    cases = {
        "unknown partition": (
            [str(TINY), "--partition=gpu-a100"],
            r"unknown Slurm partition 'gpu-a100'; this cluster has:\n  debug \[default\]",
        ),
        "missing config": (["configs/nope.yaml"], r"config file not found: 'configs/nope.yaml'"),
        "too many GPUs": (
            [str(TINY), f"--gpus-per-node={FAKE_GPUS + 1}"],
            rf"{FAKE_GPUS + 1} GPUs per node requested, but its nodes have at most {FAKE_GPUS}",
        ),
        "unknown key": ([str(TINY), "optim.lrr=1"], r"optim\.lrr: unknown key .*did you mean 'optim\.lr'"),
        "bad flag value": (
            [str(TINY), "--time=3x"],
            r"launch\.time: '3x' is not a Slurm time limit.*--time 3x",
        ),
        "over the time limit": (
            [str(TINY), "--partition=urgent", "--time=5:00:00"],
            r"time 05:00:00 requested, over its limit of 04:00:00",
        ),
    }
    for name, (args, message) in cases.items():
        done = vigsp_submit(ws, *args, f"--folder={ws.folder}", check=False)
        assert done.returncode == 2, (name, done.stdout, done.stderr)
        assert done.stderr.startswith("vigsp submit: error: "), (name, done.stderr)
        assert re.search(message, done.stderr), (name, done.stderr)
        assert "Traceback" not in done.stderr, (name, done.stderr)
    assert known_job_ids() <= before  # no new job (an earlier test's may have been forgotten since)
    assert not ws.folder.parent.exists()  # nothing was written for submitit either


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.timeout(360)
def test_local_executor_runs_the_same_job(workspace: Workspace) -> None:
    ws = workspace
    done = vigsp_submit(
        ws,
        str(TINY),
        *ws.overrides(**{"run.name": "local", "run.max_steps": 2}),
        "--local",
        "--tasks-per-node=1",
        f"--tracking-uri={ws.tracking_uri}",
        f"--folder={ws.folder}",
    )
    assert "on this machine, 1 node(s) x 1 rank(s)" in done.stdout
    assert re.search(r"^job \S+ \(local\): finished at step 2, MLflow run \w+ in sqlite:", done.stdout, re.M)
    assert_one_clean_mlflow_run(ws, "local", 2)


# ---------------------------------------------------------------- no cluster needed


def test_sweep_entries_get_their_own_run_names_and_one_experiment(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        f"experiment: lr-sweep\noverrides: [run.max_steps=3]\nsweep:\n"
        f"  - {TINY}\n  - config: {TINY}\n    overrides: [optim.lr=1e-3]\n"
        f"  - config: {TINY}\n    name: mine\n"
    )
    entries, is_array = expand_sweep(None, ["run.seed=1"], [str(sweep)])
    assert is_array
    assert plan_runs(entries) == "lr-sweep"
    names = [e.cfg.run.name for e in entries]
    assert names == ["tiny_test-0", "tiny_test-lr_1e-3", "mine"]
    assert {e.cfg.tracking.experiment_name for e in entries} == {"lr-sweep"}
    assert all(e.cfg.run.max_steps == 3 and e.cfg.run.seed == 1 for e in entries)
    assert entries[1].cfg.optim.lr == 1e-3

    # Override sets on one CONFIG.
    entries, _ = expand_sweep(str(TINY), [], ["optim.lr=1e-3 run.seed=2", "optim.lr=3e-3"])
    plan_runs(entries)
    assert [e.cfg.run.name for e in entries] == ["tiny_test-lr_1e-3-seed_2", "tiny_test-lr_3e-3"]


def test_sweep_mistakes_are_clear(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="needs a CONFIG before --sweep"):
        expand_sweep(None, [], ["optim.lr=1e-3"])
    with pytest.raises(UserError, match="config file not found: 'nope'"):
        expand_sweep(None, [], [str(TINY), "nope"])
    entries, _ = expand_sweep(str(TINY), ["run.name=same"], ["optim.lr=1e-3", "optim.lr=2e-3"])
    with pytest.raises(UserError, match=r"run\.name 'same' is set for 2 sweep entries"):
        plan_runs(entries)
    bad = tmp_path / "bad.yaml"
    bad.write_text("sweep:\n  - {config: x, lr: 1}\n")
    with pytest.raises(UserError, match=r"unknown key\(s\) \['lr'\]"):
        expand_sweep(None, [], [str(bad)])


@pytest.mark.parametrize(
    ("mem", "gib"), [("200G", 200.0), ("64000M", 62.5), ("1T", 1024.0), ("2048", 2.0), (None, None)]
)
def test_memory_gb(mem: str | None, gib: float | None) -> None:
    assert memory_gb(mem) == gib
