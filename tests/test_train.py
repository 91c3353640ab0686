"""The training engine for real: 2 DeepSpeed ranks (gloo, CPU) on a real DALI pipeline over the
prepared Fashion-MNIST, killed, signalled and resumed, tracked by a real ``mlflow server``.

The reference is an uninterrupted run of the same config; interrupted runs must reproduce its
steps.csv (loss and lr of every optimizer step, written with every bit) exactly.
"""

from __future__ import annotations

import itertools
import signal

import pytest
import torch

from tests.fixtures.datasets import fashion_mnist  # noqa: F401 (fixture)
from tests.fixtures.mlflow_server import MlflowServer, mlflow_server_fixture  # noqa: F401 (fixture)
from tests.fixtures.tiny_training import (  # noqa: F401 (fixtures)
    RUN,
    TOTAL_STEPS,
    data_fixture,
    finish,
    reference_fixture,
    train,
)
from tests.fixtures.training import RankGroup, last_step, read_steps, wait_for
from vigsp.train.checkpoint import COMPLETE, FAULT_SLEEP_ENV, LATEST
from vigsp.train.outcome import REQUEUE_EXIT_CODE

pytestmark = [pytest.mark.distributed, pytest.mark.dali, pytest.mark.slow]


def test_uninterrupted_run_learns(reference, tmp_path_factory) -> None:
    losses = [float(s[2]) for s in reference]
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.2, f"loss did not decrease: first steps {losses[:4]}, last {losses[-4:]}"


def test_sigkill_mid_epoch_resumes_bit_exact(data, reference, tmp_path) -> None:
    run_dir = tmp_path / "runs" / "r"
    group = train(tmp_path, data)
    # Past the step-4 and step-8 checkpoints, inside the first epoch (steps 1-10).
    wait_for(lambda: last_step(run_dir) >= 9, 240, "step 9", group)
    group.kill()
    # Step 8's checkpoint, or step 12's if the run got there before the kill landed (a warm run
    # does ~10 steps/s): either way it died mid-run, past a checkpoint.
    latest = (run_dir / "checkpoints" / LATEST).read_text().strip()
    assert latest in ("step_00000008", "step_00000012") and last_step(run_dir) < TOTAL_STEPS
    resumed = train(tmp_path, data)
    finish(resumed)
    assert "resumed from" in resumed.output(0)
    assert read_steps(run_dir) == reference  # same steps, same losses and lrs, bit for bit


def test_sigusr2_stops_saves_and_resumes_bit_exact(data, reference, tmp_path) -> None:
    run_dir = tmp_path / "runs" / "r"
    group = train(tmp_path, data)
    wait_for(lambda: last_step(run_dir) >= 13, 240, "step 13", group)  # in the second epoch
    group.signal(signal.SIGUSR2)
    finish(group, expect=REQUEUE_EXIT_CODE)
    stopped_at = last_step(run_dir)
    assert 13 <= stopped_at < TOTAL_STEPS
    assert (run_dir / "checkpoints" / LATEST).read_text().strip() == f"step_{stopped_at:08d}"
    finish(train(tmp_path, data))
    assert read_steps(run_dir) == reference


def test_kill_during_checkpoint_write_keeps_previous_checkpoint(data, tmp_path) -> None:
    run_dir = tmp_path / "runs" / "r"
    ckpts = run_dir / "checkpoints"
    # Every save pauses after DeepSpeed's files, before COMPLETE and `latest`: kill inside the 2nd.
    group = train(tmp_path, data, "run.max_steps=10", env={FAULT_SLEEP_ENV: "4"})
    wait_for(lambda: (ckpts / "step_00000008").is_dir(), 240, "the step-8 save to start", group)
    assert not (ckpts / "step_00000008" / COMPLETE).exists()
    group.kill()
    assert (ckpts / LATEST).read_text().strip() == "step_00000004"
    # The previous checkpoint loads: the run resumes from step 4 and the half-written one is gone.
    resumed = train(tmp_path, data, "run.max_steps=10")
    finish(resumed)
    assert "resumed from" in resumed.output(0) and "step_00000004" in resumed.output(0)
    assert "removing the incomplete checkpoint" in resumed.output(0)
    assert last_step(run_dir) == 10
    state = torch.load(ckpts / "step_00000010" / "rank_00001.pt", weights_only=False)
    assert state["data"]["epoch"] == 0  # rank 1 saved its own loader position


def test_incompatible_config_is_refused(data, tmp_path) -> None:
    finish(train(tmp_path, data, "run.max_steps=4", "run.epochs=1"))
    group = train(tmp_path, data, "run.max_steps=4", "run.epochs=1", "data.superpixel.n_segments=12")
    codes = group.wait()
    assert codes == [2, 2]
    out = group.output(0)
    assert "cannot resume" in out and "data.superpixel.n_segments: checkpoint has 16, config has 12" in out
    assert "Traceback" not in out


@pytest.mark.mlflow
def test_two_ranks_log_one_mlflow_run_with_continuous_steps(data, mlflow_server, tmp_path) -> None:
    from mlflow import MlflowClient

    server: MlflowServer = mlflow_server
    uri = server.uri
    experiment = f"engine-{tmp_path.name}"
    run_dir = tmp_path / "runs" / "r"
    tracked = [f"tracking.experiment_name={experiment}"]
    env = {"MLFLOW_TRACKING_URI": uri}
    group = train(tmp_path, data, *tracked, env=env)
    wait_for(lambda: last_step(run_dir) >= 9, 240, "step 9", group)
    group.kill()  # SIGKILL: the MLflow run stays RUNNING; the resumed job continues it
    finish(train(tmp_path, data, *tracked, env=env))

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "vig_sp_tiny"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    steps = sorted(m.step for m in losses)
    assert steps == list(range(2, TOTAL_STEPS + 1, 2)), steps  # every log_every step once, no repeats
    epochs = client.get_metric_history(run.info.run_id, "val/top1")
    assert sorted(m.step for m in epochs) == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert {"figures/superpixels.png", "figures/curves.png"} <= artifacts


@pytest.mark.mlflow
def test_a_server_killed_mid_run_does_not_stop_training(data, mlflow_server, tmp_path) -> None:
    import json

    server: MlflowServer = mlflow_server
    run_dir = tmp_path / "runs" / "r"
    env = {"MLFLOW_TRACKING_URI": server.uri}
    group = train(
        tmp_path, data, "run.max_steps=12", f"tracking.experiment_name=dead-{tmp_path.name}", env=env
    )
    try:
        wait_for(lambda: last_step(run_dir) >= 3, 240, "step 3", group)
        server.stop(signal.SIGKILL)  # a crashed server, mid-run
        finish(group)  # training goes on and ends normally
    finally:
        server.start()  # the session's server, for the other tests
    assert last_step(run_dir) == 12
    report = json.loads((run_dir / "mlflow_unlogged.jsonl").read_text().splitlines()[-1])
    assert report["outages"] >= 1 and not report["complete"]  # said at the end what was not logged


@pytest.mark.mlflow
def test_compare_ranks_two_real_runs(data, mlflow_server, tmp_path) -> None:
    import csv as csv_module

    from vigsp.cli import main as vigsp_main

    experiment = f"compare-{tmp_path.name}"
    env = {"MLFLOW_TRACKING_URI": mlflow_server.uri}
    for name, lr in (("low-lr", "1e-5"), ("good-lr", "2e-3")):
        extra = ("run.epochs=1", f"run.name={name}", f"optim.lr={lr}", "schedule.warmup_lr=1e-6")
        finish(
            train(
                tmp_path,
                data,
                *extra,
                "schedule.min_lr=1e-6",
                f"tracking.experiment_name={experiment}",
                env=env,
            )
        )
    top1 = {}
    for name in ("low-lr", "good-lr"):
        with (tmp_path / "runs" / name / "epochs.csv").open() as src:
            top1[name] = max(float(row["val_top1"]) for row in csv_module.DictReader(src))
    assert top1["good-lr"] != top1["low-lr"]
    out = tmp_path / "runs.csv"
    code = vigsp_main(
        ["compare", "--tracking-uri", mlflow_server.uri, "--experiment", experiment, "--csv", str(out)]
    )
    assert code == 0
    with out.open() as src:
        rows = list(csv_module.DictReader(src))
    assert [r["run_name"] for r in rows] == sorted(top1, key=top1.get, reverse=True)
    assert [float(r["top1"]) for r in rows] == pytest.approx(sorted(top1.values(), reverse=True))


def test_zero2_bf16_accumulation_stop_and_resume_is_exact(data, tmp_path) -> None:
    """ZeRO 2 shards gradients and optimizer state per rank; both must come back on resume."""
    zero = ("deepspeed.zero_stage=2", "deepspeed.bf16=true", "deepspeed.gradient_accumulation_steps=2")
    zero += ("deepspeed.gradient_clipping=1.0", "checkpoint.every_n_steps=3")
    finish(train(tmp_path / "ref", data, *zero))
    reference = read_steps(tmp_path / "ref" / "runs" / "r")
    assert [s[0] for s in reference] == list(range(1, 11))  # 10 micro batches per epoch -> 5 steps

    run_dir = tmp_path / "stopped" / "runs" / "r"
    group = train(tmp_path / "stopped", data, *zero)
    wait_for(lambda: last_step(run_dir) >= 4, 240, "step 4", group)
    group.signal(signal.SIGUSR2)
    finish(group, expect=REQUEUE_EXIT_CODE)
    assert last_step(run_dir) < 10
    finish(train(tmp_path / "stopped", data, *zero))
    assert read_steps(run_dir) == reference


def test_another_world_size_continues_the_epoch_and_the_schedule(data, reference, tmp_path) -> None:
    """Stopped mid-epoch on 2 ranks, resumed on 1: the interrupted epoch goes on with the images it
    had left (each once: tests/test_data_pipelines.py checks the images), so it ends after exactly
    as many one-rank steps as those images fill; the lr goes on from where it was; MLflow records
    the change."""
    from mlflow import MlflowClient

    from vigsp.tracking.names import EMBEDDED_DB, TAG_WORLD_SIZE_HISTORY

    run_dir = tmp_path / "runs" / "r"
    group = train(tmp_path, data)
    wait_for(lambda: last_step(run_dir) >= 3, 240, "step 3", group)
    group.signal(signal.SIGUSR2)
    finish(group, expect=REQUEUE_EXIT_CODE)
    stopped = last_step(run_dir)
    assert stopped < 10  # inside the first epoch (10 steps of 2 x 8 images)
    overrides = [*data.overrides(), *RUN, "run.output_dir=runs", "run.name=r"]
    single = RankGroup(tmp_path, "tiny_test", overrides, world=1)
    assert single.wait() == [0], single.output(0)
    assert "with 1 ranks instead of 2" in single.output(0)

    # 160 - 16 * stopped images left of epoch 0: 2 * (10 - stopped) steps of 8; then 20 for epoch 1.
    end_of_epoch_0 = stopped + 2 * (10 - stopped)
    rows = read_steps(run_dir)
    assert [r[0] for r in rows] == list(range(1, end_of_epoch_0 + 20 + 1))
    assert [r[1] for r in rows] == [0] * end_of_epoch_0 + [1] * 20
    # The lr of the first step on one rank is the one the 2-rank run would have used next ...
    assert float(rows[stopped][3]) == float(reference[stopped][3])
    # ... and it decays (warmup is over by then) to the schedule's end at the new last step.
    lrs = [float(r[3]) for r in rows[stopped:]]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    assert lrs[-1] <= float(reference[-1][3])
    client = MlflowClient(f"sqlite:///{tmp_path / EMBEDDED_DB}")
    (run,) = client.search_runs([client.get_experiment_by_name("tiny-test").experiment_id])
    assert run.data.tags[TAG_WORLD_SIZE_HISTORY] == f"2 rank(s) from step 0, 1 rank(s) from step {stopped}"
    assert run.data.tags["vigsp.world_size"] == "1" and run.info.status == "FINISHED"


@pytest.mark.mlflow
def test_overlay_is_drawn_from_the_first_validation_batch(data, mlflow_server, tmp_path) -> None:
    import numpy as np
    from mlflow import MlflowClient

    from vigsp.config import load_config
    from vigsp.data.loader import EvalLoader
    from vigsp.models import get_spec

    server: MlflowServer = mlflow_server
    experiment = f"overlay-{tmp_path.name}"
    env = {"MLFLOW_TRACKING_URI": server.uri}
    finish(
        train(
            tmp_path,
            data,
            "run.max_steps=2",
            "run.epochs=1",
            f"tracking.experiment_name={experiment}",
            env=env,
        )
    )

    client = MlflowClient(server.uri)
    run = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])[0]
    drawn = np.load(client.download_artifacts(run.info.run_id, "figures/superpixels.npz", str(tmp_path)))
    # The first batch rank 0's validation loader yields, built from the run's own resolved config.
    cfg = load_config(tmp_path / "runs" / "r" / "config.yaml")
    outputs = get_spec(cfg.model.name).inputs().pipeline_outputs
    first = next(iter(EvalLoader(cfg.data, rank=0, world_size=2, outputs=outputs)))
    count = len(drawn["index"])
    assert count == min(8, len(first)) and count > 0
    np.testing.assert_array_equal(drawn["index"], first.index[:count].numpy())
    np.testing.assert_array_equal(drawn["label_maps"], first.label_maps[:count].numpy())
