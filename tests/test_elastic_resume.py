"""Elastic resume for real: a checkpoint whose optimizer state is sharded over the ranks that
wrote it (ZeRO 1 and 2) resumes on another number of ranks, converted automatically to
DeepSpeed's universal checkpoint and cached inside the tag (vigsp/train/reshard.py).

The oracle is DeepSpeed itself: what a resume on W' ranks restores (through the universal copy)
must equal, bit for bit, what DeepSpeed's plain load restores on the W ranks that wrote the tag:
every parameter's fp32 master weights and both Adam moments, gathered whole, the optimizer's
step count, the schedule's step and the training position.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.fixtures.datasets import fashion_mnist  # noqa: F401 (fixture)
from tests.fixtures.tiny_training import RUN, data_fixture  # noqa: F401 (fixture)
from tests.fixtures.training import REPO, RankGroup, SmallData, read_steps
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


@pytest.mark.parametrize(("stage", "written_by", "resumed_on"), [(2, 2, 1), (1, 1, 2)])
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


def test_zero2_run_continues_on_fewer_ranks_and_back(data: SmallData, tmp_path: Path) -> None:
    """2 ranks -> 1 -> 2, each leg a real training: steps continue with none lost or repeated."""
    run_dir = tmp_path / "runs" / "r"
    legs = [(WRITTEN_AT, 2), (12, 1), (16, 2)]  # (run.max_steps, ranks)
    for max_steps, world in legs:
        final = _run(tmp_path, _overrides(data, 2, "run.epochs=5", f"run.max_steps={max_steps}"), world)
    steps = [s[0] for s in read_steps(run_dir)]
    assert steps == list(range(1, 17)), steps
    assert "with 2 ranks instead of 1" in final.output(0)
    for step in (WRITTEN_AT, 12):  # each tag that another world size resumed holds its universal copy
        assert (run_dir / "checkpoints" / f"step_{step:08d}" / UNIVERSAL / "COMPLETE").is_file()
