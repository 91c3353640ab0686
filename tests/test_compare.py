"""``vigsp compare`` on real runs logged by the tracker: embedded store and a real server."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.fixtures.mlflow_server import MlflowServer, free_port, mlflow_server_fixture  # noqa: F401 (fixture)
from vigsp.cli import main
from vigsp.tracking import (
    EPOCH,
    TAG_NUM_PARAMS,
    TRAIN_EPOCH_IMG_PER_S,
    TRAIN_LOSS,
    VAL_LOSS,
    VAL_TOP1,
    VAL_TOP5,
    WALL_TIME_S,
    RunEnd,
    Tracker,
)

# name -> (model, params, top-1 per epoch, top-5 per epoch, val loss per epoch, img/s, wall s, failed?)
SP196 = ("vig_sp196", 7_100_000, [50.0, 70.0, 65.0], [80.0, 90.0, 88.0], [2.0, 1.0, 1.2], 1200.0, 5400, False)
TI = ("vig_ti", 5_700_000, [60.0, 68.0, 69.0], [85.0, 89.0, 91.0], [1.5, 1.1, 0.9], 1500.0, 4000, False)
BROKEN = ("vig_b", 86_000_000, [], [], [], 300.0, 60, True)  # died before its first validation
RUNS = {"sp196": SP196, "ti": TI, "broken": BROKEN}
ORDER_BY_TOP1 = ["sp196", "ti", "broken"]  # best top-1 (70 > 69), not the last epoch's (65 < 69)


def log_runs(run_root: Path, experiment: str, tracking_uri: str | None) -> None:
    """Log RUNS the way the training engine does."""
    for name, (model, n_params, top1, top5, vloss, img_s, wall, failed) in RUNS.items():
        config = {"model": {"name": model}, "epochs": len(top1)}
        tracker = Tracker.open(
            config,
            run_root / name,
            0,
            tracking_uri,
            experiment,
            run_name=name,
            system_metrics_interval_s=None,
        )
        assert isinstance(tracker, Tracker)
        tracker.set_tags({TAG_NUM_PARAMS: n_params})
        for step in range(10):
            tracker.log_metrics({TRAIN_LOSS: 3.0 - step / 10}, step)
        for epoch, (t1, t5, vl) in enumerate(zip(top1, top5, vloss, strict=True), 1):
            tracker.log_metrics({VAL_TOP1: t1, VAL_TOP5: t5, VAL_LOSS: vl, EPOCH: epoch}, epoch)
            tracker.log_metrics({TRAIN_EPOCH_IMG_PER_S: img_s, WALL_TIME_S: wall * epoch / len(top1)}, epoch)
        if not top1:
            tracker.log_metrics({TRAIN_EPOCH_IMG_PER_S: img_s}, 0)
        tracker.finish(RunEnd.FAILED if failed else RunEnd.FINISHED)


def table_order(out: str) -> list[str]:
    """Run names in the order the rich table prints them."""
    return [name for line in out.splitlines() for name in RUNS if f" {name} " in line]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def check_png(path: Path) -> None:
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > 2 * img.height  # panels side by side


def pin_http_env(mp: pytest.MonkeyPatch) -> None:
    # The tracker and compare set these with setdefault; pinning them here keeps them from
    # leaking into other tests.
    mp.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    mp.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A working directory whose embedded store (mlruns.db) holds RUNS in experiment 'cmp'."""
    workdir = tmp_path_factory.mktemp("compare")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        pin_http_env(mp)
        log_runs(workdir / "runs", "cmp", None)
        yield workdir


@pytest.fixture
def in_workdir(embedded: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(embedded)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    pin_http_env(monkeypatch)
    return embedded


def test_ranks_embedded_runs_by_best_top1(in_workdir: Path, capsys: pytest.CaptureFixture[str]):
    out_csv, out_png = in_workdir / "out" / "runs.csv", in_workdir / "out" / "curves.png"
    assert main(["compare", "--experiment", "cmp", "--csv", str(out_csv), "--png", str(out_png)]) == 0
    out = capsys.readouterr().out
    assert table_order(out) == ORDER_BY_TOP1
    assert "7.1M" in out and "86.0M" in out and "1h30m" in out
    rows = read_csv(out_csv)
    assert [r["run_name"] for r in rows] == ORDER_BY_TOP1
    sp196, ti, broken = rows
    assert (sp196["rank"], sp196["model"], sp196["num_params"]) == ("1", "vig_sp196", "7100000.0")
    assert (float(sp196["top1"]), float(sp196["top5"])) == (70.0, 90.0)  # top-5 at the best top-1 epoch
    assert (float(ti["top1"]), float(ti["top5"])) == (69.0, 91.0)
    assert float(sp196["epochs"]) == 3 and float(sp196["img_per_s"]) == 1200.0
    assert float(sp196["wall_time_s"]) == 5400.0
    assert sp196["status"] == "FINISHED" and broken["status"] == "FAILED"
    assert broken["top1"] == "" and broken["epochs"] == ""
    check_png(out_png)


def test_metric_where_lower_is_better(in_workdir: Path, capsys: pytest.CaptureFixture[str]):
    out_csv = in_workdir / "loss.csv"
    assert main(["compare", "--experiment", "cmp", "--metric", VAL_LOSS, "--csv", str(out_csv)]) == 0
    assert table_order(capsys.readouterr().out) == ["ti", "sp196", "broken"]  # 0.9 < 1.0
    assert [float(r[f"best {VAL_LOSS}"] or "nan") for r in read_csv(out_csv)][:2] == [0.9, 1.0]


def test_filter_on_params(in_workdir: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["compare", "--experiment", "cmp", "--filter", "params.model.name = 'vig_ti'"]) == 0
    assert table_order(capsys.readouterr().out) == ["ti"]


def test_clear_errors(in_workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["compare", "--experiment", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no experiment named 'nope'" in err and "'cmp'" in err and "Traceback" not in err
    assert main(["compare", "--experiment", "cmp", "--filter", "params.model.name === 'x'"]) == 2
    assert "bad --filter" in capsys.readouterr().err
    os.chdir(tmp_path)  # no mlruns.db here: say so, and do not create one
    assert main(["compare"]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "mlruns.db").exists()
    assert main(["compare", "--tracking-uri", f"http://127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the MLflow tracking server" in err and "Traceback" not in err


@pytest.mark.mlflow
def test_ranks_server_runs(
    mlflow_server: MlflowServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    pin_http_env(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)  # as users of a shared server do
    log_runs(tmp_path / "runs", "cmp-server", None)
    capsys.readouterr()  # MLflow prints a link per finished run
    out_csv, out_png = tmp_path / "runs.csv", tmp_path / "curves.png"
    args = ["compare", "--experiment", "cmp-server", "--csv", str(out_csv), "--png", str(out_png)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert table_order(out) == ORDER_BY_TOP1 and mlflow_server.uri in out
    assert [(r["run_name"], r["top1"], r["top5"]) for r in read_csv(out_csv)] == [
        ("sp196", "70.0", "90.0"),
        ("ti", "69.0", "91.0"),
        ("broken", "", ""),
    ]
    check_png(out_png)
    assert main(["compare", "--experiment", "missing", "--tracking-uri", mlflow_server.uri]) == 2
    assert "'cmp-server'" in capsys.readouterr().err
