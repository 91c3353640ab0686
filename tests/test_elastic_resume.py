"""Elastic resume for real: a checkpoint whose optimizer state is sharded over the ranks that
wrote it (ZeRO 1 and 2) resumes on another number of ranks, converted automatically to
DeepSpeed's universal checkpoint and cached inside the tag (vigsp/train/reshard.py).

The oracle is DeepSpeed itself: what a resume on W' ranks restores (through the universal copy)
must equal, bit for bit, what DeepSpeed's plain load restores on the W ranks that wrote the tag:
every parameter's fp32 master weights and both Adam moments, gathered whole, the optimizer's
step count, the schedule's step and the training position.
"""

from __future__ import annotations

import csv
import signal
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.fixtures.datasets import fashion_mnist  # noqa: F401 (fixture)
from tests.fixtures.tiny_training import RUN, data_fixture  # noqa: F401 (fixture)
from tests.fixtures.training import REPO, RankGroup, SmallData, last_step, read_steps, small_data, wait_for
from vigsp.train.outcome import REQUEUE_EXIT_CODE
from vigsp.train.reshard import UNIVERSAL

pytestmark = [pytest.mark.distributed, pytest.mark.dali, pytest.mark.slow]

RESTORED = REPO / "tests" / "fixtures" / "restored_state.py"
WRITTEN_AT = 6  # the tag every case resumes: step 6, mid-epoch on both world sizes


def _overrides(data: SmallData, stage: int, *extra: str) -> list[str]:
    # keep_last high: no tag is rotated away between the runs that read it.
    return [
        *data.overrides(), *RUN, f"deepspeed.zero_stage={stage}", "checkpoint.keep_last=10",
        "run.output_dir=runs", "run.name=r", *extra,
    ]  # fmt: skip


def _run(cwd: Path, overrides: list[str], world: int, script: Path | None = None, env=None) -> RankGroup:
    group = RankGroup(cwd, "tiny_test", overrides, world=world, script=script, extra_env=env)
    codes = group.wait()
    assert codes == [0] * world, "\n---\n".join(group.output(r)[-3000:] for r in range(world))
    return group


def _restored(cwd: Path, data: SmallData, stage: int, world: int, name: str) -> tuple[dict, str]:
    out = cwd / f"{name}.pt"
    overrides = _overrides(data, stage, f"run.max_steps={WRITTEN_AT}")
    group = _run(cwd, overrides, world, RESTORED, {"VIGSP_TEST_RESTORED_OUT": str(out)})
    return torch.load(out, weights_only=True), group.output(0)


def _assert_same_state(resharded: dict, plain: dict) -> None:
    for key in ("global_step", "epoch", "scheduler_step", "adam_steps"):
        assert resharded[key] == plain[key], key
    assert resharded["params"].keys() == plain["params"].keys()
    for name, tensors in plain["params"].items():
        for kind, expected in tensors.items():
            got = resharded["params"][name][kind]
            assert got.dtype == expected.dtype and torch.equal(got, expected), f"{name} {kind} differs"


@pytest.mark.parametrize(("stage", "written_by", "resumed_on"), [(2, 2, 1), (2, 1, 2), (1, 1, 2)])
def test_sharded_checkpoint_resumes_on_another_world_size_with_identical_state(
    data: SmallData, tmp_path: Path, stage: int, written_by: int, resumed_on: int
) -> None:
    _run(tmp_path, _overrides(data, stage, f"run.max_steps={WRITTEN_AT}"), written_by)
    tag_dir = tmp_path / "runs" / "r" / "checkpoints" / f"step_{WRITTEN_AT:08d}"
    assert (tag_dir / "COMPLETE").is_file()

    plain, _ = _restored(tmp_path, data, stage, written_by, "plain")
    assert not (tag_dir / UNIVERSAL).exists()  # the same world size loads the tag as written
    assert plain["global_step"] == WRITTEN_AT and plain["adam_steps"] == [WRITTEN_AT]

    resharded, log = _restored(tmp_path, data, stage, resumed_on, "resharded")
    assert f"converting {tag_dir} to a universal checkpoint" in log, log[-3000:]
    assert (tag_dir / UNIVERSAL / "COMPLETE").is_file() and not (tag_dir / f"{UNIVERSAL}.tmp").exists()
    _assert_same_state(resharded, plain)

    again, log = _restored(tmp_path, data, stage, resumed_on, "cached")
    assert "using the universal copy cached" in log and "converting" not in log, log[-3000:]
    _assert_same_state(again, plain)


def test_zero2_stopped_mid_epoch_on_2_ranks_then_1_then_2_trains_each_image_once(
    fashion_mnist,  # noqa: F811 (the fixture)
    tmp_path: Path,
) -> None:
    """Stopped mid-epoch on 2 ranks, resumed on 1 and stopped again inside the same epoch, then
    finished on 2: the sample indices every rank recorded (run.record_samples) cover the epoch's
    images each exactly once; steps run on with none lost or repeated; the loss keeps decreasing."""
    data = small_data(fashion_mnist.out, tmp_path / "lists", 40, 5)  # 400 images: 25 steps on 2 ranks
    run_dir = tmp_path / "runs" / "r"
    overrides = _overrides(
        data, 2, "run.epochs=1", "run.record_samples=true", "checkpoint.every_n_steps=1000"
    )

    def stopped_after(world: int, step: int) -> int:
        group = RankGroup(tmp_path, "tiny_test", overrides, world=world)
        wait_for(lambda: last_step(run_dir) >= step, 240, f"step {step}", group)
        group.signal(signal.SIGUSR2)
        assert group.wait() == [REQUEUE_EXIT_CODE] * world, group.output(0)[-3000:]
        return last_step(run_dir)

    first = stopped_after(2, 3)
    second = stopped_after(1, first + 4)  # the epoch's rest takes 2 x (25 - first) one-rank steps
    assert second < first + 2 * (25 - first), "the second stop came after the epoch's end"
    final = _run(tmp_path, overrides, 2)
    assert "with 2 ranks instead of 1" in final.output(0)

    rows = read_steps(run_dir)
    steps = [r[0] for r in rows]
    assert steps == list(range(1, len(steps) + 1))
    trained: Counter[int] = Counter()
    for path in sorted((run_dir / "samples").glob("rank_*.csv")):
        with path.open(newline="") as src:
            trained.update(int(i) for row in csv.DictReader(src) for i in row["samples"].split())
    assert trained == Counter(range(400)), "images trained twice or never: " + str(
        {i: n for i, n in trained.items() if n != 1} or sorted(set(range(400)) - set(trained))[:20]
    )
    losses = [float(r[2]) for r in rows]
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.2, losses
