"""Checkpoint faults in real training processes (2 DeepSpeed ranks on gloo, the DALI pipeline over
Fashion-MNIST, a real ``mlflow server``): a damaged latest tag, a kill in each phase of a save,
and a disk that fills up during one. Nothing may be lost: a resume reproduces the uninterrupted
run's steps.csv bit for bit, and ``latest`` always names a tag that loads."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures.datasets import fashion_mnist  # noqa: F401 (fixture)
from tests.fixtures.disks import tmpfs
from tests.fixtures.mlflow_server import MlflowServer, mlflow_server_fixture  # noqa: F401 (fixture)
from tests.fixtures.tiny_training import (  # noqa: F401 (fixtures)
    data_fixture,
    finish,
    reference_fixture,
    train,
)
from tests.fixtures.training import RankGroup, last_step, read_steps, wait_for
from vigsp.tracking import names
from vigsp.train.checkpoint import FAULT_PHASE_ENV, FAULT_SLEEP_ENV, LATEST, tag_for
from vigsp.train.manifest import read_manifest, verify
from vigsp.train.resume import DAMAGED_DIR

pytestmark = [pytest.mark.distributed, pytest.mark.dali, pytest.mark.slow]


def full_log(group: RankGroup, rank: int = 0) -> str:
    return group.logs[rank].read_text(errors="replace")


def latest(ckpts: Path) -> str:
    return (ckpts / LATEST).read_text().strip()


def tracked(server: MlflowServer, name: str, tmp_path: Path) -> tuple[list[str], dict[str, str], str]:
    """Overrides and environment that log a run to ``server`` in its own experiment, and its name."""
    experiment = f"{name}-{tmp_path.name}"
    return [f"tracking.experiment_name={experiment}"], {"MLFLOW_TRACKING_URI": server.uri}, experiment


def mlflow_run(uri: str, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


@pytest.mark.mlflow
def test_a_damaged_latest_is_set_aside_and_the_previous_tag_resumes_bit_exact(
    data, reference, mlflow_server, tmp_path
) -> None:
    server: MlflowServer = mlflow_server
    tracking, env, experiment = tracked(server, "damaged", tmp_path)
    run_dir = tmp_path / "runs" / "r"
    ckpts = run_dir / "checkpoints"
    group = train(tmp_path, data, *tracking, env=env)
    wait_for(lambda: last_step(run_dir) >= 9, 240, "step 9", group)
    group.kill()
    damaged = latest(ckpts)
    previous = tag_for(int(damaged.split("_")[1]) - 4)  # checkpoint.every_n_steps=4, keep_last=2
    assert (ckpts / previous).is_dir()
    # One file cut short, one with a single bit flipped (same size: only the checksum sees it).
    model = ckpts / damaged / "mp_rank_00_model_states.pt"
    with model.open("r+b") as f:
        f.truncate(model.stat().st_size // 2)
    rank1 = ckpts / damaged / "rank_00001.pt"
    blob = bytearray(rank1.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    rank1.write_bytes(bytes(blob))

    resumed = train(tmp_path, data, *tracking, env=env)
    finish(resumed)
    out = full_log(resumed)
    assert "CHECKPOINT DAMAGED" in out and "mp_rank_00_model_states.pt" in out and "rank_00001.pt" in out
    assert f"resumed from {ckpts / previous}" in out
    assert read_steps(run_dir) == reference  # from the previous tag on, the same losses bit for bit
    aside = ckpts / DAMAGED_DIR / damaged
    assert (aside / "mp_rank_00_model_states.pt").is_file() and (aside / "rank_00001.pt").is_file()
    run = mlflow_run(server.uri, experiment)
    note = run.data.tags[names.TAG_CHECKPOINT_FALLBACK]
    assert damaged in note and previous in note and "rank_00001.pt" in note
    assert run.info.status == "FINISHED"


@pytest.mark.parametrize(("phase", "survivor"), [("manifest", tag_for(4)), ("latest", tag_for(8))])
def test_a_kill_in_each_phase_of_a_save_leaves_a_loadable_latest(data, tmp_path, phase, survivor) -> None:
    # ("files", before COMPLETE) is test_train.py's test_kill_during_checkpoint_write_...
    ckpts = tmp_path / "runs" / "r" / "checkpoints"
    faults = {FAULT_SLEEP_ENV: "5", FAULT_PHASE_ENV: phase}
    group = train(tmp_path, data, "run.max_steps=10", env=faults)
    marker = f"at the {phase} phase of {tag_for(8)}"
    wait_for(lambda: marker in full_log(group), 240, marker, group)
    group.kill()
    assert latest(ckpts) == survivor
    resumed = train(tmp_path, data, "run.max_steps=10")
    finish(resumed)
    assert f"resumed from {ckpts / survivor}" in full_log(resumed)
    assert last_step(tmp_path / "runs" / "r") == 10
    assert latest(ckpts) == tag_for(10) and verify(ckpts / tag_for(10)) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """Room for the run's logs and one checkpoint (~2.8 MiB), not two."""
    with tmpfs(tmp_path / "small", "5m") as mount:
        yield mount


@pytest.mark.mlflow
def test_a_full_disk_during_a_save_is_a_clear_error_and_latest_still_loads(
    data, mlflow_server, small_disk, tmp_path
) -> None:
    server: MlflowServer = mlflow_server
    tracking, env, experiment = tracked(server, "full", tmp_path)
    on_small = [f"run.output_dir={small_disk / 'runs'}", "run.max_steps=10", *tracking]
    group = train(tmp_path, data, *on_small, env=env)
    assert group.wait() == [2, 2], full_log(group)
    out = full_log(group)
    ckpts = small_disk / "runs" / "r" / "checkpoints"
    assert f"no space left on the device of {ckpts}" in out
    assert f"`latest` still names {tag_for(4)}, which is intact" in out and "checkpoint.keep_last=2" in out
    size = read_manifest(ckpts / tag_for(4)).total_bytes / 2**20
    assert f"one checkpoint takes {size:,.1f} MiB" in out  # from step 4's manifest
    assert "Traceback" not in out and "Traceback" not in full_log(group, 1)
    assert latest(ckpts) == tag_for(4) and verify(ckpts / tag_for(4)) == []
    assert not (ckpts / tag_for(8)).exists()
    assert mlflow_run(server.uri, experiment).info.status == "FAILED"

    # The same run on a larger disk continues from the intact checkpoint.
    big = tmp_path / "big"
    shutil.copytree(small_disk / "runs", big)
    resumed = train(tmp_path, data, f"run.output_dir={big}", "run.max_steps=10", *tracking, env=env)
    finish(resumed)
    assert f"resumed from {big / 'r' / 'checkpoints' / tag_for(4)}" in full_log(resumed)
    assert last_step(big / "r") == 10


@pytest.mark.mlflow
def test_a_second_training_on_a_run_directory_is_refused_and_a_killed_one_taken_over(
    data, reference, mlflow_server, tmp_path
) -> None:
    server: MlflowServer = mlflow_server
    tracking, env, experiment = tracked(server, "lease", tmp_path)
    run_dir = tmp_path / "runs" / "r"
    # The first pauses for 60 s once its step-4 checkpoint is published (a warm run would finish
    # all 20 steps in the time the second needs to start); the second comes and goes meanwhile.
    pause = {FAULT_SLEEP_ENV: "60", FAULT_PHASE_ENV: "latest"}
    first = train(tmp_path, data, *tracking, env={**env, **pause})
    marker = f"at the latest phase of {tag_for(4)}"
    wait_for(lambda: marker in full_log(first), 240, marker, first)
    second = train(tmp_path, data, *tracking, env=env)
    assert second.wait() == [2, 2], full_log(second)
    refused = full_log(second)
    assert f"is in use by another training: pid {first.procs[0].pid} on " in refused
    assert "Traceback" not in refused and "(checkpoints in " not in refused  # it never got to set up
    assert all(p.poll() is None for p in first.procs)  # the first one is still there, undisturbed

    first.kill()
    third = train(tmp_path, data, *tracking, env=env)
    finish(third)
    out = full_log(third)
    assert (
        f"took over the run directory {run_dir}" in out and f"pid {first.procs[0].pid} is not running" in out
    )
    assert read_steps(run_dir) == reference  # no step from the refused one, none lost by the kill
    starts = (run_dir / "train.log").read_text().count("(checkpoints in ")
    assert starts == 2, f"train.log shows {starts} starts: only the first and third may have written"
    run = mlflow_run(server.uri, experiment)
    assert run.info.status == "FINISHED"
    assert not (run_dir / "LEASE").exists()  # released at the end
