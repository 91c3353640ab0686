"""The tracker against the embedded default store (sqlite in the working directory, no server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from vigsp.tracking import (
    EMBEDDED_ARTIFACTS,
    EMBEDDED_DB,
    RUN_FILE,
    TAG_CHANGED_PARAMS,
    TAG_GIT_COMMIT,
    TAG_RESUME_COUNT,
    TAG_RUN_DIR,
    TRAIN_LOSS,
    UNLOGGED_FILE,
    NullTracker,
    RunEnd,
    Tracker,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"model": {"name": "vig_sp_ti", "knn": 9}, "optim": {"lr": 0.001}, "classes": ["a", "b"]}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # One store for the module: creating the sqlite schema takes seconds.
    return tmp_path_factory.mktemp("embedded")


@pytest.fixture(autouse=True)
def embedded_env(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # Tracker.open sets these with setdefault; pin them so they do not leak into other tests.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    yield


def client(workdir: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{workdir / EMBEDDED_DB}")


def open_tracker(run_dir: Path, experiment: str, config: dict | None = None) -> Tracker:
    tracker = Tracker.open(
        config or CONFIG,
        run_dir,
        rank=0,
        experiment=experiment,
        run_name=run_dir.name,
        system_metrics_interval_s=None,
    )
    assert isinstance(tracker, Tracker) and tracker.run_id
    return tracker


def steps_of(workdir: Path, run_id: str, key: str = TRAIN_LOSS) -> list[int]:
    return sorted(m.step for m in client(workdir).get_metric_history(run_id, key))


def last_report(run_dir: Path) -> dict:
    return json.loads((run_dir / UNLOGGED_FILE).read_text().splitlines()[-1])


def test_default_store_is_sqlite_in_cwd_with_artifacts_beside_it(workdir: Path):
    run_dir = workdir / "runs" / "default"
    with open_tracker(run_dir, "embedded") as tracker:
        for step in range(25):
            tracker.log_metrics({TRAIN_LOSS: 1.0 / (step + 1)}, step)
        note = run_dir / "note.txt"
        note.write_text("hello")
        tracker.log_artifact(note, "notes")
    run = client(workdir).get_run(tracker.run_id)
    assert (workdir / EMBEDDED_DB).is_file()
    assert run.info.status == "FINISHED"
    assert steps_of(workdir, tracker.run_id) == list(range(25))
    assert run.data.params["model.name"] == "vig_sp_ti"
    assert run.data.params["classes"] == '["a", "b"]'
    assert run.data.tags[TAG_RUN_DIR] == str(run_dir.resolve())
    assert "torch.version" in run.data.tags and "vigsp.version" in run.data.tags
    artifacts = workdir / EMBEDDED_ARTIFACTS / tracker.run_id / "artifacts"
    assert (artifacts / "notes" / "note.txt").read_text() == "hello"
    assert json.loads((artifacts / "mlflow_config.json").read_text()) == CONFIG
    assert json.loads((run_dir / RUN_FILE).read_text())["run_id"] == tracker.run_id
    report = last_report(run_dir)
    assert report["complete"] and report["unlogged"]["counts"] == {} and report["end"] == "FINISHED"
    assert not (workdir / "mlruns").exists()  # MLflow's sqlite default artifact place stays unused


def test_git_commit_tag_matches_the_source_tree(workdir: Path):
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("source tree has no commit yet")
    with open_tracker(workdir / "runs" / "git", "embedded") as tracker:
        pass
    assert client(workdir).get_run(tracker.run_id).data.tags[TAG_GIT_COMMIT] == head.stdout.strip()


def test_exception_marks_failed(workdir: Path):
    with (
        pytest.raises(RuntimeError, match="diverged"),
        open_tracker(workdir / "runs" / "fail", "ends") as tracker,
    ):
        tracker.log_metrics({TRAIN_LOSS: float("nan")}, 0)
        raise RuntimeError("loss diverged")
    assert client(workdir).get_run(tracker.run_id).info.status == "FAILED"


def test_keyboard_interrupt_marks_killed(workdir: Path):
    with pytest.raises(KeyboardInterrupt), open_tracker(workdir / "runs" / "ctrl-c", "ends") as tracker:
        raise KeyboardInterrupt
    assert client(workdir).get_run(tracker.run_id).info.status == "KILLED"


def test_tracker_leaves_signal_handlers_alone(workdir: Path):
    # One owner of SIGTERM and SIGUSR2 (the engine's StopFlag): the tracker installs nothing.
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR2)}
    with open_tracker(workdir / "runs" / "signals", "ends"):
        assert {sig: signal.getsignal(sig) for sig in before} == before
    assert {sig: signal.getsignal(sig) for sig in before} == before


def _run_until_sigterm(run_dir: Path, workdir: Path, script: str) -> subprocess.Popen:
    """Start ``script`` (which logs steps 0..9, prints READY and sleeps), then SIGTERM it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=workdir, env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "READY"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    return proc


def test_sigterm_made_an_interrupt_by_its_owner_marks_killed(workdir: Path):
    # The tracker installs no handler of its own: whoever owns SIGTERM decides. An owner that
    # turns it into KeyboardInterrupt unwinds the ``with`` block, which flushes and marks KILLED.
    run_dir = workdir / "runs" / "sigterm"
    script = f"""
import signal, time
from vigsp.tracking import Tracker
signal.signal(signal.SIGTERM, signal.default_int_handler)
with Tracker.open({{}}, {str(run_dir)!r}, rank=0, experiment="ends", system_metrics_interval_s=None) as t:
    for step in range(10):
        t.log_metrics({{"train/loss": 1.0}}, step)
    print("READY", flush=True)
    time.sleep(120)
"""
    proc = _run_until_sigterm(run_dir, workdir, script)
    assert proc.returncode != 0
    run_id = json.loads((run_dir / RUN_FILE).read_text())["run_id"]
    assert client(workdir).get_run(run_id).info.status == "KILLED"
    assert steps_of(workdir, run_id) == list(range(10))  # flushed before ending


def test_sigterm_under_the_engines_stop_flag_requeues(workdir: Path):
    # As the engine does: StopFlag owns SIGTERM (entered first), the loop stops at a step
    # boundary and finishes REQUEUED; the tracker's ``with`` does not turn it into KILLED.
    run_dir = workdir / "runs" / "sigterm-stopflag"
    script = f"""
import time
from vigsp.tracking import RunEnd, Tracker
from vigsp.train.signals import StopFlag
tracker = Tracker.open({{}}, {str(run_dir)!r}, rank=0, experiment="ends", system_metrics_interval_s=None)
with StopFlag() as stop, tracker:
    for step in range(10):
        tracker.log_metrics({{"train/loss": 1.0}}, step)
    print("READY", flush=True)
    deadline = time.monotonic() + 120
    while not stop.requested and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stop.requested
    tracker.finish(RunEnd.REQUEUED)
"""
    proc = _run_until_sigterm(run_dir, workdir, script)
    assert proc.returncode == 0
    run_id = json.loads((run_dir / RUN_FILE).read_text())["run_id"]
    assert client(workdir).get_run(run_id).info.status == "RUNNING"
    assert steps_of(workdir, run_id) == list(range(10))
    report = last_report(run_dir)
    assert report["end"] == "REQUEUED" and report["complete"]


def test_requeue_leaves_running_and_resume_continues_without_duplicates(workdir: Path):
    run_dir = workdir / "runs" / "requeue"
    first = open_tracker(run_dir, "resume")
    with first:
        for step in range(30):
            first.log_metrics({TRAIN_LOSS: float(step)}, step)
        first.finish(RunEnd.REQUEUED)
    assert client(workdir).get_run(first.run_id).info.status == "RUNNING"
    # The next job restarts from a checkpoint at step 19, so it logs steps 20..29 again.
    changed = {**CONFIG, "optim": {"lr": 0.002}}
    second = open_tracker(run_dir, "resume", config=changed)
    with second:
        for step in range(20, 50):
            second.log_metrics({TRAIN_LOSS: float(step) + 0.5}, step)
    assert second.run_id == first.run_id
    run = client(workdir).get_run(first.run_id)
    assert run.info.status == "FINISHED"
    history = sorted((m.step, m.value) for m in client(workdir).get_metric_history(first.run_id, TRAIN_LOSS))
    # Steps 20..29 keep the first job's values; nothing is logged twice.
    assert history == [(s, float(s)) for s in range(30)] + [(s, s + 0.5) for s in range(30, 50)]
    assert run.data.tags[TAG_RESUME_COUNT] == "1"
    assert run.data.params["optim.lr"] == "0.001"  # params are immutable in MLflow
    assert json.loads(run.data.tags[TAG_CHANGED_PARAMS]) == {"optim.lr": "0.002"}
    assert last_report(run_dir)["skipped_on_resume"] == 10
    assert len(client(workdir).search_runs([run.info.experiment_id])) == 1


def test_nonzero_rank_gets_a_null_tracker(workdir: Path):
    run_dir = workdir / "runs" / "rank1"
    tracker = Tracker.open(CONFIG, run_dir, rank=1, experiment="ranks")
    assert type(tracker) is NullTracker and tracker.run_id is None
    with tracker:
        tracker.log_metrics({TRAIN_LOSS: 1.0}, 0)
    assert not run_dir.exists()


def test_figure_is_kept_in_run_dir_and_uploaded(workdir: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = workdir / "runs" / "figure"
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    with open_tracker(run_dir, "embedded") as tracker:
        tracker.log_figure(fig, "curve.png")
    plt.close(fig)
    uploaded = workdir / EMBEDDED_ARTIFACTS / tracker.run_id / "artifacts" / "figures" / "curve.png"
    assert uploaded.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert uploaded.read_bytes() == (run_dir / "figures" / "curve.png").read_bytes()


def test_missing_artifact_is_reported_not_fatal(workdir: Path):
    run_dir = workdir / "runs" / "missing"
    with open_tracker(run_dir, "embedded") as tracker:
        tracker.log_artifact(run_dir / "nope.bin")
        tracker.log_metrics({TRAIN_LOSS: 1.0}, 0)
    assert tracker.unlogged is not None and dict(tracker.unlogged.counts) == {"artifacts": 1}
    report = last_report(run_dir)
    assert report["unlogged"]["artifacts"] == [str((run_dir / "nope.bin").resolve())]
    assert not report["complete"]
    assert steps_of(workdir, tracker.run_id) == [0]


def test_log_calls_return_at_once(workdir: Path):
    # Behaviour, not a benchmark: 2000 calls must not wait on sqlite round trips.
    with open_tracker(workdir / "runs" / "fast", "embedded") as tracker:
        start = time.perf_counter()
        for step in range(2000):
            tracker.log_metrics({TRAIN_LOSS: 1.0, "train/lr": 0.1}, step)
        elapsed = time.perf_counter() - start
    assert elapsed < 2.0, elapsed
    assert steps_of(workdir, tracker.run_id) == list(range(2000))


def test_flush_waits_until_everything_is_stored(workdir: Path):
    with open_tracker(workdir / "runs" / "flush", "embedded") as tracker:
        for step in range(500):
            tracker.log_metrics({TRAIN_LOSS: 1.0}, step)
        assert tracker.flush(timeout_s=60)
        assert steps_of(workdir, tracker.run_id) == list(range(500))  # before the run ends


def test_a_rejected_metric_loses_only_itself(workdir: Path):
    run_dir = workdir / "runs" / "rejected"
    with open_tracker(run_dir, "embedded") as tracker:
        tracker.flush(timeout_s=60)  # so the following calls travel in one batch
        for step in range(10):
            tracker.log_metrics({TRAIN_LOSS: 1.0}, step)
            if step == 5:
                tracker.log_metrics({"bad@name": 1.0}, step)  # MLflow refuses '@' in metric names
    assert steps_of(workdir, tracker.run_id) == list(range(10))
    assert tracker.unlogged is not None and dict(tracker.unlogged.counts) == {"metrics": 1}
    assert tracker.unlogged.metric_steps == {"bad@name": [1, 5, 5]}
    assert any("rejected by MLflow" in reason for reason in last_report(run_dir)["unlogged"]["reasons"])
