"""``vigsp eval`` on a real trained run: the tiny 2-rank Fashion-MNIST run (tests/fixtures/trained_run.py),
evaluated through the real DALI eval pipeline on 1 and 2 ranks (torchrun), logged to the run's
own MLflow store, and refusing what it must refuse (weights that would run code, a damaged
checkpoint, EMA weights a run never kept)."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.datasets import fashion_mnist  # noqa: F401 (fixture)
from tests.fixtures.tiny_training import data_fixture  # noqa: F401 (fixture)
from tests.fixtures.trained_run import trained_fixture  # noqa: F401 (fixture)
from tests.test_inference_weights import hostile_weights

pytestmark = [pytest.mark.dali, pytest.mark.distributed, pytest.mark.slow]


def vigsp_eval(cwd: Path, *args: str, ranks: int = 1, expect: int = 0) -> subprocess.CompletedProcess[str]:
    launcher = [sys.executable, "-m", "vigsp.cli"]
    if ranks > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={ranks}",
            "-m",
            "vigsp.cli",
        ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(
        [*launcher, "eval", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == expect, f"exit {done.returncode}:\n{done.stdout}\n{done.stderr[-6000:]}"
    return done


def _last_epoch(run_dir: Path) -> dict[str, str]:
    with open(run_dir / "epochs.csv") as handle:
        return list(csv.DictReader(handle))[-1]


def _predicted(report: Path) -> dict[str, str]:
    with open(report / "predictions.csv") as handle:
        return {row["file"]: row["predicted"] for row in csv.DictReader(handle)}


def test_eval_reproduces_the_training_validation_on_one_and_two_ranks(trained, data):
    run_dir = trained / "runs" / "r"
    last = _last_epoch(run_dir)
    reports = {}
    for ranks in (1, 2):
        out = trained / f"eval_{ranks}"
        done = vigsp_eval(trained, "runs/r", "--no-mlflow", "--out", str(out), ranks=ranks)
        metrics = json.loads((out / "metrics.json").read_text())
        # The same weights, pipeline and counting as training's last evaluation: equal figures.
        assert metrics["top1"] == float(last["val_top1"]), done.stdout
        assert metrics["top5"] == float(last["val_top5"])
        assert metrics["loss"] == pytest.approx(float(last["val_loss"]), rel=1e-5)
        reports[ranks] = _predicted(out)
        assert "most confused with" in done.stdout and f"top-1 {metrics['top1']:.2f}%" in done.stdout
    val_files = [line.strip() for line in data.val_list.read_text().splitlines() if line.strip()]
    assert sorted(reports[1]) == sorted(val_files)  # every image once, on either world size
    assert reports[1] == reports[2]
    assert (trained / "eval_1" / "confusion.png").stat().st_size > 1000
    with open(trained / "eval_1" / "confusion.csv") as handle:
        rows = list(csv.reader(handle))
    assert sum(int(v) for row in rows[1:] for v in row[1:]) == len(val_files)


def test_best_weights_reproduce_the_best_checkpoint_figure(trained):
    best = json.loads((trained / "runs" / "r" / "checkpoints" / "best.json").read_text())
    out = trained / "eval_best"
    vigsp_eval(trained, "runs/r", "--weights", "best", "--no-mlflow", "--out", str(out))
    assert json.loads((out / "metrics.json").read_text())["top1"] == best["val_top1"]
    # A checkpoint tag given directly is the same model.
    tag = trained / "runs" / "r" / "checkpoints" / best["tag"]
    vigsp_eval(trained, str(tag), "--no-mlflow", "--out", str(trained / "eval_tag"))
    assert _predicted(trained / "eval_tag") == _predicted(out)


def test_the_evaluation_is_logged_to_the_training_run(trained):
    from mlflow import MlflowClient

    run_ref = json.loads((trained / "runs" / "r" / "mlflow_run.json").read_text())
    vigsp_eval(trained, "runs/r")
    metrics = json.loads((trained / "runs" / "r" / "eval" / "val-final" / "metrics.json").read_text())
    client = MlflowClient(run_ref["tracking_uri"])
    run = client.get_run(run_ref["run_id"])
    assert run.data.metrics["eval/val/top1"] == metrics["top1"]
    assert run.data.metrics["eval/val/images"] == metrics["images"]
    inputs = [d for d in run.inputs.dataset_inputs if d.dataset.name == "val"]
    assert inputs and inputs[0].dataset.digest == metrics["digest"]
    assert {t.key: t.value for t in inputs[0].tags}["mlflow.data.context"] == "eval"
    logged = {Path(f.path).name for f in client.list_artifacts(run_ref["run_id"], "eval/val")}
    assert {"metrics.json", "per_class.csv", "confusion.csv", "confusion.png", "predictions.csv"} <= logged
    # --new-run: a run of its own, linked to the training run.
    done = vigsp_eval(trained, "runs/r", "--new-run", "--name", "val_again")
    new_id = done.stderr.split("logged to MLflow run ")[1].split()[0]
    assert new_id != run_ref["run_id"]
    new = client.get_run(new_id)
    assert new.data.tags["vigsp.evaluates_run"] == run_ref["run_id"] and new.info.status == "FINISHED"
    assert new.data.metrics["eval/val_again/top1"] == metrics["top1"]


def test_eval_on_another_folder_uses_the_run_classes(trained, data):
    """An ImageFolder with some of the classes: labels follow the model's class list."""
    folder = trained / "other"
    picked = ["3_dress", "7_sneaker"]
    for name in picked:
        (folder / name).mkdir(parents=True)
        for source in sorted((data.root / "val" / name).iterdir())[:6]:
            shutil.copy(source, folder / name / source.name)
    done = vigsp_eval(
        trained, "runs/r", "--data", str(folder), "--no-mlflow", "--out", str(trained / "eval_other")
    )
    with open(trained / "eval_other" / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and {r["label"] for r in rows} == set(picked)
    assert json.loads((trained / "eval_other" / "metrics.json").read_text())["dataset"] == "other", (
        done.stdout
    )


def test_weights_that_would_run_code_are_refused(trained, tmp_path):
    """A run directory whose weights file carries a pickled object with a __reduce__ that would
    create a file: refused with a message naming it, and nothing runs."""
    legacy = tmp_path / "legacy_run"
    legacy.mkdir()
    shutil.copy(trained / "runs" / "r" / "config.yaml", legacy / "config.yaml")
    marker = tmp_path / "code_ran"
    hostile_weights(legacy / "final_model.pt", marker)
    for target in (legacy, legacy / "final_model.pt"):
        done = vigsp_eval(trained, str(target), "--no-mlflow", expect=2)
        assert "final_model.pt" in done.stderr and "pickled Python objects" in done.stderr
        assert "Traceback" not in done.stderr
    assert not marker.exists()


def test_bad_requests_get_clear_errors(trained, tmp_path):
    done = vigsp_eval(trained, "runs/r", "--weights", "ema", "--no-mlflow", expect=2)
    assert "no 'ema' weights" in done.stderr and "--weights final" in done.stderr
    done = vigsp_eval(trained, str(tmp_path / "nowhere"), expect=2)
    assert "does not exist" in done.stderr
    # A damaged checkpoint is named, not loaded.
    copy = tmp_path / "copy"
    shutil.copytree(trained / "runs" / "r", copy)
    tag = copy / "checkpoints" / (copy / "checkpoints" / "latest").read_text().strip()
    model_file = tag / "mp_rank_00_model_states.pt"
    model_file.write_bytes(model_file.read_bytes()[:-100])
    done = vigsp_eval(trained, str(copy), "--weights", "latest", "--no-mlflow", expect=2)
    assert "is damaged" in done.stderr and "mp_rank_00_model_states.pt" in done.stderr
    assert "Traceback" not in done.stderr
