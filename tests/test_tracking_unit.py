"""Fast checks of the tracking layer: params, loss accounting, URIs, end states, the sender's worker."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from vigsp.tracking.names import EMBEDDED_ARTIFACTS
from vigsp.tracking.ops import ArtifactOp, EndOp, MetricsOp, Op, ParamsOp, TagsOp, Unlogged
from vigsp.tracking.params import KEY_LIMIT, PARAM_VALUE_LIMIT, TRUNCATION_MARK, config_params, flatten
from vigsp.tracking.sender import Backoff, RunSpec, Sender
from vigsp.tracking.store import artifact_location, open_client, resolve_tracking_uri, sqlite_path
from vigsp.tracking.tracker import RunEnd, end_for_exception

REPO = Path(__file__).resolve().parents[1]


def test_flatten_nests_into_dotted_keys_and_keeps_lists_whole():
    cfg = {"model": {"name": "vig", "knn": {"k": 9}}, "lr": 0.1, "sizes": [1, 2], "empty": {}}
    assert flatten(cfg) == {"model.name": "vig", "model.knn.k": 9, "lr": 0.1, "sizes": [1, 2], "empty": {}}


def test_config_params_stringifies_and_bounds_values():
    params = config_params({"a": None, "b": [1, "x"], "c": {"d": True}, "long": "y" * 2000, "ok": "z" * 500})
    assert params["a"] == "None"
    assert params["b"] == '[1, "x"]'
    assert params["c.d"] == "True"
    assert len(params["long"]) == PARAM_VALUE_LIMIT and params["long"].endswith(TRUNCATION_MARK)
    assert params["ok"] == "z" * 500  # exactly at the limit: untouched


def test_overlong_keys_are_cut_stably_and_stay_distinct():
    base = "k" * 300
    cfg = {base + "1": 1, base + "2": 2}
    first = config_params(cfg)
    assert len(first) == 2 and all(len(k) <= KEY_LIMIT for k in first)
    # Stable across processes (a resume must produce the same keys), unlike hash().
    keys = [base + "1", base + "2"]
    code = (
        f"from vigsp.tracking.params import config_params as c; print(sorted(c(dict.fromkeys({keys!r}, 1))))"
    )
    env = {"PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == str(sorted(first))


def test_unlogged_counts_per_kind_and_metric_step_ranges():
    lost = Unlogged()
    lost.add(MetricsOp({"a": 1.0, "b": 2.0}, step=5, timestamp_ms=0), "queue full")
    lost.add(MetricsOp({"a": 1.0}, step=9, timestamp_ms=0), "queue full")
    other = Unlogged()
    other.add(ParamsOp({"p": "1", "q": "2"}), "rejected")
    other.add(TagsOp({"t": "1"}), "rejected")
    other.add(ArtifactOp(Path("/x/y.png"), None), "unreachable")
    other.add(EndOp("FINISHED"), "unreachable")
    other.add(MetricsOp({"a": 0.0}, step=2, timestamp_ms=0), "unreachable")
    lost.merge(other)
    assert dict(lost.counts) == {"metrics": 4, "params": 2, "tags": 1, "artifacts": 1, "status": 1}
    assert lost.total == 9
    assert lost.to_json()["metric_steps"] == {
        "a": {"count": 3, "first_step": 2, "last_step": 9},
        "b": {"count": 1, "first_step": 5, "last_step": 5},
    }
    assert lost.artifacts == ["/x/y.png"]
    assert "4 metrics" in lost.summary()


def test_full_queue_drops_newest_without_blocking_and_counts_them(tmp_path: Path):
    # Not started: nothing drains the queue, as when the server is down.
    sender = Sender(RunSpec("sqlite:///unused.db", "e", tmp_path), queue_size=3)
    for step in range(10):
        sender.submit(MetricsOp({"loss": 1.0, "lr": 0.1}, step, 0))
    assert sender.queue.qsize() == 3
    assert sender.dropped.counts["metrics"] == 14
    assert sender.dropped.metric_steps["loss"] == [7, 3, 9]


class _FlakyRun:
    """Stands in for the sender's MlflowRun: the first ``failures`` sends fail as a dead server's."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[Op] = []

    def open(self) -> None:
        pass

    def send(self, batch: list[Op]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("connection refused")
        self.sent.extend(batch)


def _sender_on(run: _FlakyRun, tmp_path: Path) -> Sender:
    sender = Sender(
        RunSpec("sqlite:///unused.db", "e", tmp_path), queue_size=100, backoff=Backoff(0.01, 0.05)
    )
    sender.mlflow = run  # type: ignore[assignment]
    return sender


def test_flush_returns_once_everything_before_it_is_sent(tmp_path: Path):
    run = _FlakyRun(failures=0)
    sender = _sender_on(run, tmp_path)
    sender.start()
    for step in range(5):
        sender.submit(MetricsOp({"loss": float(step)}, step, 0))
    assert sender.flush(timeout_s=10)
    assert [op.step for op in run.sent if isinstance(op, MetricsOp)] == list(range(5))
    assert sender.close(None, 10, 0).total == 0


def test_transient_failures_are_retried_warned_once_and_replayed_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    caplog.set_level("INFO", logger="vigsp.tracking")
    run = _FlakyRun(failures=3)
    sender = _sender_on(run, tmp_path)
    for step in range(5):
        sender.submit(MetricsOp({"loss": float(step)}, step, 0))
    sender.start()
    lost = sender.close("FINISHED", 10, 0)
    assert lost.total == 0 and sender.outages == 1
    assert [op.step for op in run.sent if isinstance(op, MetricsOp)] == list(range(5))  # each once
    assert run.sent[-1] == EndOp("FINISHED")
    messages = [r.getMessage() for r in caplog.records]
    assert sum("is unreachable" in m for m in messages) == 1
    assert sum("reachable again" in m for m in messages) == 1


def test_close_while_unreachable_names_what_was_not_logged(tmp_path: Path):
    sender = _sender_on(_FlakyRun(failures=10**9), tmp_path)
    sender.start()
    for step in range(3):
        sender.submit(MetricsOp({"loss": 1.0}, step, 0))
    sender.submit(ArtifactOp(tmp_path / "a.png", None))
    start = time.monotonic()
    assert not sender.flush(timeout_s=30)  # does not wait for a dead server
    assert time.monotonic() - start < 5
    lost = sender.close("FINISHED", 0.2, 0)
    assert not sender.is_alive()
    assert dict(lost.counts) == {"metrics": 3, "artifacts": 1, "status": 1}
    assert lost.metric_steps["loss"] == [3, 0, 2]
    assert dict(lost.reasons) == {"MLflow unreachable until the end of the run": 5}


def test_tracking_uri_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, cwd=tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://env:5000")
    assert resolve_tracking_uri(None, cwd=tmp_path) == "http://env:5000"
    assert resolve_tracking_uri("http://arg:5000", cwd=tmp_path) == "http://arg:5000"


def test_sqlite_store_keeps_artifacts_next_to_the_database(tmp_path: Path):
    uri = f"sqlite:///{tmp_path}/sub/x.db"
    assert sqlite_path(uri) == tmp_path / "sub" / "x.db"
    assert sqlite_path("sqlite:///rel.db") == Path("rel.db")
    assert artifact_location(uri) == (tmp_path / "sub" / EMBEDDED_ARTIFACTS).as_uri()
    assert artifact_location("http://host:5000") is None


def _open_fresh_store(uri: str, barrier: Any) -> None:
    barrier.wait()  # all at once, as the jobs of a sweep starting together
    open_client(uri).search_experiments()


def test_processes_opening_a_fresh_sqlite_store_together_all_succeed(tmp_path: Path):
    # Unlocked, MLflow's schema creation races: most openers die and the store can be left
    # half-migrated for every later client.
    import mlflow  # noqa: F401  imported before forking, so the openers start at the same moment

    uri = f"sqlite:///{tmp_path}/fresh.db"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(4)
    openers = [ctx.Process(target=_open_fresh_store, args=(uri, barrier)) for _ in range(4)]
    for p in openers:
        p.start()
    for p in openers:
        p.join(120)
    assert [p.exitcode for p in openers] == [0, 0, 0, 0]
    assert open_client(uri).search_experiments()  # the Default experiment: a complete schema


@pytest.mark.parametrize(
    ("exc", "end"),
    [
        (None, RunEnd.FINISHED),
        (RuntimeError("boom"), RunEnd.FAILED),
        (KeyboardInterrupt(), RunEnd.KILLED),
        (SystemExit(0), RunEnd.FINISHED),
        (SystemExit(3), RunEnd.FAILED),
    ],
)
def test_end_state_for_exception(exc: BaseException | None, end: RunEnd):
    assert end_for_exception(exc) is end


def test_git_tags_name_the_commit_and_dirtiness(tmp_path: Path):
    from vigsp.tracking.names import TAG_GIT_COMMIT, TAG_GIT_DIRTY
    from vigsp.tracking.provenance import git_tags

    assert git_tags(tmp_path) == {}  # not a checkout: no tags rather than an error

    def git(*args: str) -> str:
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@t",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t",
        }
        done = subprocess.run(
            ["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True, env=env
        )
        return done.stdout.strip()

    git("init", "-q")
    (tmp_path / "f.py").write_text("x = 1\n")
    git("add", "f.py")
    git("commit", "-q", "-m", "init")
    head = git("rev-parse", "HEAD")
    assert git_tags(tmp_path) == {TAG_GIT_COMMIT: head, TAG_GIT_DIRTY: "false"}
    (tmp_path / "f.py").write_text("x = 2\n")
    assert git_tags(tmp_path) == {TAG_GIT_COMMIT: head, TAG_GIT_DIRTY: "true"}


def test_a_tracking_uri_with_a_password_is_refused_without_echoing_it():
    from vigsp.errors import UserError
    from vigsp.tracking.store import refuse_credentials_in_uri, resolve_tracking_uri

    assert refuse_credentials_in_uri("http://mlflow.cluster:5000") == "http://mlflow.cluster:5000"
    assert refuse_credentials_in_uri("http://alice@mlflow.cluster:5000")  # a user name alone is no secret
    with pytest.raises(UserError, match="MLFLOW_TRACKING_PASSWORD") as caught:
        resolve_tracking_uri("https://alice:hunter2@mlflow.cluster")
    assert "hunter2" not in str(caught.value)


def test_registering_needs_the_logged_model():
    from pydantic import ValidationError

    from vigsp.tracking.config import TrackingConfig

    assert TrackingConfig(register_model="fmnist").log_model
    with pytest.raises(ValidationError, match=r"tracking\.register_model needs tracking\.log_model"):
        TrackingConfig(register_model="fmnist", log_model=False)
