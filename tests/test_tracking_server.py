"""The tracker against a real ``mlflow server``: ranks, a SIGKILLed and resumed job, a dying server.

The "training" here is a stand-in loop run in real processes (``python -m tests.test_tracking_server``),
calling the tracker the way the engine does: open on every rank, log per step, checkpoint now
and then, resume from the checkpoint in the run directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.mlflow_server import MlflowServer, mlflow_server_fixture  # noqa: F401 (fixture)
from vigsp.tracking import RUN_FILE, TAG_RESUME_COUNT, TRAIN_LOSS, TRAIN_LR, UNLOGGED_FILE, RunEnd, Tracker

pytestmark = pytest.mark.mlflow

REPO = Path(__file__).resolve().parents[1]
CKPT = "ckpt.json"


def loss_at(step: int) -> float:
    return 10.0 / (step + 1)


def fake_training(run_dir: Path, uri: str, experiment: str, steps: int, step_s: float) -> None:
    """What the engine does with the tracker, minus the model. Run in a child process."""
    rank = int(os.environ.get("RANK", "0"))
    ckpt = run_dir / CKPT
    start = json.loads(ckpt.read_text())["step"] + 1 if ckpt.exists() else 0
    config = {"model": {"name": "fake"}, "steps": steps}
    tracker = Tracker.open(
        config, run_dir, rank, uri, experiment, run_name="fake", system_metrics_interval_s=None
    )
    print(json.dumps({"rank": rank, "tracker": type(tracker).__name__, "mlflow": "mlflow" in sys.modules}))
    print("STARTED", flush=True)
    with tracker:
        for step in range(start, steps):
            tracker.log_metrics({TRAIN_LOSS: loss_at(step), TRAIN_LR: 0.1}, step)
            if rank == 0 and step % 10 == 9:  # the engine checkpoints every 10 steps
                tracker.flush()  # as the engine does before a checkpoint
                tmp = run_dir / f"{CKPT}.tmp"
                tmp.write_text(json.dumps({"step": step}))
                tmp.replace(ckpt)
            time.sleep(step_s)


def spawn(run_dir: Path, uri: str, experiment: str, steps: int, step_s: float, rank: int = 0):
    env = {**os.environ, "PYTHONPATH": str(REPO), "RANK": str(rank), "WORLD_SIZE": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [
        sys.executable,
        "-m",
        "tests.test_tracking_server",
        str(run_dir),
        uri,
        experiment,
        str(steps),
        str(step_s),
    ]
    # stderr to a file: a pipe nobody reads while the job runs could fill up and stall it.
    log_path = run_dir.parent / f"rank{rank}-{time.monotonic_ns()}.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log_file, text=True)
    proc.log_path = log_path  # type: ignore[attr-defined]
    return proc


def stderr_of(proc: subprocess.Popen) -> str:
    return proc.log_path.read_text()  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def http_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Tracker.open sets these with setdefault; pin them so they do not leak into other tests.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    yield


def client(server: MlflowServer):
    from mlflow import MlflowClient

    return MlflowClient(server.uri)


def runs_of(server: MlflowServer, experiment: str) -> list:
    exp = client(server).get_experiment_by_name(experiment)
    return [] if exp is None else client(server).search_runs([exp.experiment_id])


def history(server: MlflowServer, run_id: str, key: str = TRAIN_LOSS) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client(server).get_metric_history(run_id, key))


def test_two_ranks_log_one_run(mlflow_server: MlflowServer, tmp_path: Path):
    run_dir = tmp_path / "run"
    procs = [spawn(run_dir, mlflow_server.uri, "two-ranks", 30, 0.0, rank) for rank in (0, 1)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for proc in procs:
        assert proc.returncode == 0, stderr_of(proc)
    rank1 = json.loads(outs[1].splitlines()[0])
    assert rank1 == {"rank": 1, "tracker": "NullTracker", "mlflow": False}  # never touched MLflow
    runs = runs_of(mlflow_server, "two-ranks")
    assert len(runs) == 1
    assert runs[0].info.status == "FINISHED"
    assert history(mlflow_server, runs[0].info.run_id) == [(s, loss_at(s)) for s in range(30)]
    assert json.loads((run_dir / RUN_FILE).read_text())["run_id"] == runs[0].info.run_id


def test_sigkilled_job_resumes_the_same_run_without_duplicate_steps(
    mlflow_server: MlflowServer, tmp_path: Path
):
    run_dir, steps = tmp_path / "run", 200
    first = spawn(run_dir, mlflow_server.uri, "killed", steps, 0.02)
    assert first.stdout is not None
    while first.stdout.readline().strip() != "STARTED":
        assert first.poll() is None, stderr_of(first)
    run_id = json.loads((run_dir / RUN_FILE).read_text())["run_id"]
    deadline = time.monotonic() + 60
    while True:  # kill mid-logging, a few steps past a checkpoint, so the resume replays some
        logged = history(mlflow_server, run_id)
        if logged and logged[-1][0] >= 60 and 2 <= logged[-1][0] % 10 <= 6:
            break
        assert time.monotonic() < deadline and first.poll() is None, "first job did not log as expected"
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    logged_before = history(mlflow_server, run_id)
    ckpt_step = json.loads((run_dir / CKPT).read_text())["step"]
    assert logged_before[-1][0] < steps - 1, "killed too late to test a resume"
    assert ckpt_step < logged_before[-1][0], "nothing to replay: the resume would not be tested"

    second = spawn(run_dir, mlflow_server.uri, "killed", steps, 0.0)
    second.communicate(timeout=120)
    assert second.returncode == 0, stderr_of(second)

    runs = runs_of(mlflow_server, "killed")
    assert [r.info.run_id for r in runs] == [run_id]
    assert history(mlflow_server, run_id) == [(s, loss_at(s)) for s in range(steps)]  # each step once
    run = client(mlflow_server).get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_RESUME_COUNT] == "1"
    report = json.loads((run_dir / UNLOGGED_FILE).read_text().splitlines()[-1])
    # The second job replayed from the checkpoint; the steps the first had logged were skipped.
    replayed = {s for s, _ in logged_before if s > ckpt_step}
    assert report["skipped_on_resume"] >= 2 * len(replayed) > 0
    assert report["resumed"] and report["complete"]


def test_dead_server_never_stops_training_and_the_loss_is_counted(
    mlflow_server: MlflowServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="vigsp.tracking")
    run_dir = tmp_path / "run"
    tracker = Tracker.open(
        {"model": {"name": "fake"}},
        run_dir,
        0,
        mlflow_server.uri,
        "dead-server",
        queue_size=50,
        flush_timeout_s=90,
        system_metrics_interval_s=None,
    )
    assert isinstance(tracker, Tracker) and tracker.run_id
    run_id = tracker.run_id

    next_step = 0

    def log_steps(n: int) -> float:
        """Log ``n`` more steps; returns the slowest log call."""
        nonlocal next_step
        slowest = 0.0
        for step in range(next_step, next_step + n):
            start = time.perf_counter()
            tracker.log_metrics({TRAIN_LOSS: loss_at(step), TRAIN_LR: 0.1}, step)
            slowest = max(slowest, time.perf_counter() - start)
            time.sleep(0.002)
        next_step += n
        return slowest

    def wait_logged(step: int) -> None:
        deadline = time.monotonic() + 60
        while not history(mlflow_server, run_id) or history(mlflow_server, run_id)[-1][0] < step:
            assert time.monotonic() < deadline, f"step {step} never reached the server"
            log_steps(5)  # training goes on meanwhile
            time.sleep(0.05)

    try:
        with tracker:
            log_steps(20)
            wait_logged(19)
            outage_start = next_step
            mlflow_server.stop(signal.SIGKILL)
            slowest = log_steps(300)
            # Never waits on the network (a blocked call would take the 10 s HTTP timeout).
            assert slowest < 0.5, slowest
            flush_start = time.monotonic()
            assert not tracker.flush(timeout_s=60)  # does not wait for a dead server
            assert time.monotonic() - flush_start < 5
            mlflow_server.start()
            wait_logged(outage_start + 300)  # the sender reconnected and replays
            last_20 = range(next_step, next_step + 20)
            log_steps(20)
    finally:
        mlflow_server.start()  # the session's other tests need it

    total = next_step
    lost = tracker.unlogged
    assert lost is not None
    steps = [s for s, _ in history(mlflow_server, run_id)]
    assert len(steps) == len(set(steps))
    logged = set(steps)
    # Before the outage and after the server came back, every step arrived.
    assert set(range(outage_start)) <= logged and set(last_20) <= logged
    # The calls queued during the outage (queue_size=50, plus the batch in hand) were replayed;
    # newer ones found the queue full and were dropped, until the sender drained it again.
    n_lost, first_lost, last_lost = lost.metric_steps[TRAIN_LOSS]
    assert first_lost >= outage_start + 50
    assert n_lost == last_lost - first_lost + 1  # one contiguous gap
    assert logged == set(range(total)) - set(range(first_lost, last_lost + 1))
    assert lost.metric_steps[TRAIN_LR] == [n_lost, first_lost, last_lost]
    assert dict(lost.counts) == {"metrics": 2 * n_lost}
    report = json.loads((run_dir / UNLOGGED_FILE).read_text().splitlines()[-1])
    assert report["unlogged"]["counts"] == {"metrics": 2 * n_lost} and not report["complete"]
    assert report["unlogged"]["metric_steps"][TRAIN_LOSS] == {
        "count": n_lost,
        "first_step": first_lost,
        "last_step": last_lost,
    }
    assert report["outages"] == 1
    assert client(mlflow_server).get_run(run_id).info.status == RunEnd.FINISHED.value
    messages = [r.getMessage() for r in caplog.records]
    assert sum("is unreachable" in m for m in messages) == 1  # warned once
    assert sum("queue is full" in m for m in messages) == 1
    assert any("reachable again" in m for m in messages)


def test_unreachable_server_at_open_does_not_block_training(tmp_path: Path):
    from tests.fixtures.mlflow_server import free_port

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    start = time.monotonic()
    tracker = Tracker.open({}, tmp_path / "run", 0, uri, "nowhere", connect_timeout_s=1, flush_timeout_s=1)
    with tracker:
        for step in range(100):
            tracker.log_metrics({TRAIN_LOSS: 1.0}, step)
    assert time.monotonic() - start < 20
    assert tracker.run_id is None
    assert tracker.unlogged is not None
    assert tracker.unlogged.counts["metrics"] == 100 and tracker.unlogged.counts["status"] == 1
    assert not (tmp_path / "run" / RUN_FILE).exists()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for name in ("run_dir", "uri", "experiment"):
        parser.add_argument(name)
    parser.add_argument("steps", type=int)
    parser.add_argument("step_s", type=float)
    a = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    fake_training(Path(a.run_dir), a.uri, a.experiment, a.steps, a.step_s)
