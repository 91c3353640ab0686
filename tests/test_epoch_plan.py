"""vigsp/data/epoch_plan.py against a plain simulation of the ranks: an epoch interrupted any number
of times, each stretch on another layout (world size, batch size, accumulation), trains no image
twice, loses none except those the plan says it drops, and keeps every rank's batches in step."""

from __future__ import annotations

import numpy as np
import pytest

from vigsp.data.epoch_plan import Layout, Segment, continuation, current_segment, first_segment


def _simulate(order: np.ndarray, layouts: list[Layout], stops: list[int]) -> tuple[list[int], int, list]:
    """Every image the ranks take, segment by segment (``stops[k]`` micro batches in segment k, the
    last segment to its end), the images the plans dropped, and the plans."""
    history: list[Segment] = []
    taken: list[int] = []
    dropped, plans = 0, []
    for k, layout in enumerate(layouts):
        plan = current_segment(order, history, layout)
        plans.append(plan)
        dropped += plan.dropped
        steps = plan.micro_batches if k == len(layouts) - 1 else min(stops[k], plan.micro_batches)
        for rank in range(layout.world_size):
            shard = plan.shard(rank)
            # Each rank takes whole batches of its shard; only the segment's last may be short.
            batches = [shard[i * layout.batch_size : (i + 1) * layout.batch_size] for i in range(steps)]
            assert all(len(b) >= 1 for b in batches), (rank, [len(b) for b in batches])
            assert all(len(b) == layout.batch_size for b in batches[:-1])
            if plan.micro_batches:  # every rank has exactly micro_batches non-empty batches
                assert (plan.micro_batches - 1) * layout.batch_size < len(shard)
            taken += [int(i) for b in batches for i in b]
        history.append(Segment(layout, steps))
    return taken, dropped, plans


def test_random_interruptions_train_each_image_at_most_once_and_lose_only_what_is_dropped() -> None:
    rng = np.random.default_rng(0)
    for _ in range(2000):
        order = rng.permutation(int(rng.integers(5, 300)))
        layouts: list[Layout] = []
        for _ in range(int(rng.integers(1, 5))):
            layout = Layout(int(rng.integers(1, 5)), int(rng.integers(1, 9)), int(rng.integers(1, 3)))
            if not layouts or layouts[-1] != layout:  # a same-layout resume is not a new segment
                layouts.append(layout)
        stops = [int(rng.integers(0, 40)) for _ in layouts]
        taken, dropped, plans = _simulate(order, layouts, stops)
        assert len(taken) == len(set(taken))
        first = plans[0]
        epoch = {int(i) for r in range(first.layout.world_size) for i in first.trained(r)}
        assert len(epoch - set(taken)) <= dropped  # what no segment trained, the plans said
        assert set(taken) <= set(order.tolist())


def test_without_accumulation_every_unseen_image_is_trained_once() -> None:
    # 72 images on 2 ranks x 5: an epoch of 70; 3 steps, then 40 left for 3 ranks x 5 (last batch short).
    taken, dropped, _ = _simulate(np.arange(72), [Layout(2, 5), Layout(3, 5)], [3])
    assert dropped == 0 and sorted(taken) == list(range(70))


def test_a_continuation_fills_a_too_short_last_batch_from_the_tail() -> None:
    pool, tail = np.arange(31), np.arange(100, 105)
    plan, left = continuation(pool, tail, Layout(3, 5))  # 31 = 2 x 15 + 1: one image for 3 ranks
    assert plan.micro_batches == 3 and plan.dropped == 0 and left.tolist() == [102, 103, 104]
    assert sorted(np.concatenate([plan.trained(r) for r in range(3)]).tolist()) == [*range(31), 100, 101]


def test_a_continuation_without_a_tail_leaves_that_image_to_the_next_epoch() -> None:
    plan, _ = continuation(np.arange(31), np.arange(0), Layout(3, 5))
    assert plan.micro_batches == 2 and plan.dropped == 1


@pytest.mark.parametrize("accum", [1, 3])
def test_the_first_segment_is_the_epoch_as_before(accum: int) -> None:
    order = np.random.default_rng(1).permutation(100)
    plan = first_segment(order, Layout(2, 8, accum))
    assert plan.files.tolist() == order[:96].tolist()  # cut to whole global batches
    assert plan.micro_batches == 6 // accum * accum and not plan.partial
    assert plan.shard(1).tolist() == order[48:96].tolist()
