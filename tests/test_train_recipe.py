"""The recipe's pieces against simple references: weight-decay groups, the lr schedule, mixup,
top-k, EMA, the stop flag and the checkpoint rotation."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vigsp.config import load_config
from vigsp.models import create_model
from vigsp.train.checkpoint import COMPLETE, LATEST, CheckpointManager, tag_for
from vigsp.train.distributed import DistEnv
from vigsp.train.ema import ModelEma
from vigsp.train.evaluate import topk_correct
from vigsp.train.mixup import Mixup
from vigsp.train.optim import LrSchedule, build_optimizer, build_scheduler, parameter_groups, warmup_cosine
from vigsp.train.signals import StopFlag


def test_no_weight_decay_on_norms_biases_and_position_embedding() -> None:
    model = create_model("vig_tiny_patch", num_classes=10)
    decay, no_decay = parameter_groups(model, 0.05, decay_norm_and_bias=False)
    names = {id(p): n for n, p in model.named_parameters()}
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    for param in decay["params"]:
        assert param.ndim > 1 and "pos_embed" not in names[id(param)]
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert any("pos_embed" in n for n in exempt) and any(n.endswith(".bias") for n in exempt)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    (everything,) = parameter_groups(model, 0.05, decay_norm_and_bias=True)
    assert len(everything["params"]) == len(list(model.parameters()))


def test_warmup_cosine_matches_the_formula() -> None:
    peak, start, floor, total, warm = 2e-3, 1e-6, 1e-5, 100, 10
    factor = warmup_cosine(total, warm, peak, start, floor)
    for step in range(total + 1):
        if step < warm:
            expected = start + (peak - start) * step / warm
        else:
            expected = floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
        assert factor(step) * peak == pytest.approx(expected, rel=1e-12)
    assert factor(warm) == pytest.approx(1.0) and factor(total) * peak == pytest.approx(floor)


def test_a_rebased_schedule_goes_on_from_where_it_was_and_ends_at_the_new_last_step() -> None:
    """A resume on half the ranks at step 30 of 100: 140 steps are left instead of 70."""
    cfg = load_config("quickstart")
    plain = LrSchedule(cfg.schedule, peak_lr=1e-3, total_steps=100, steps_per_epoch=10, layout=[2, 8, 1])
    elastic = LrSchedule(cfg.schedule, peak_lr=1e-3, total_steps=100, steps_per_epoch=10, layout=[1, 8, 1])
    elastic.load_state_dict(plain.state_dict())
    assert [elastic.factor(s) for s in range(101)] == [plain.factor(s) for s in range(101)]  # identity so far
    elastic.rebase(30, 170)
    assert elastic.factor(30) == plain.factor(30)  # no jump
    assert elastic.factor(100) == pytest.approx(plain.factor(65))  # halfway through what was left
    assert elastic.factor(170) == pytest.approx(plain.factor(100))  # the end, at the new last step
    again = LrSchedule(cfg.schedule, peak_lr=1e-3, total_steps=50, steps_per_epoch=5, layout=[1, 8, 1])
    again.load_state_dict(elastic.state_dict())  # as a later resume restores it
    assert [again.factor(s) for s in range(171)] == [elastic.factor(s) for s in range(171)]


def test_scheduler_drives_the_optimizer_lr() -> None:
    cfg = load_config("quickstart")
    model = nn.Linear(4, 2)
    opt = build_optimizer(model, cfg.optim, lr=1e-3)
    schedule = LrSchedule(cfg.schedule, peak_lr=1e-3, total_steps=20, steps_per_epoch=10, layout=[1, 8, 1])
    sched = build_scheduler(opt, schedule)
    lrs = []
    for _ in range(20):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    warm = round(cfg.schedule.warmup_epochs * 10)
    assert lrs[0] == pytest.approx(cfg.schedule.warmup_lr)
    assert lrs[warm] == pytest.approx(1e-3) and max(lrs) == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1 :], strict=False))  # cosine only falls


def test_mixup_targets_sum_to_one_and_mix_the_reversed_batch() -> None:
    rng = np.random.default_rng(0)
    images = torch.rand(6, 3, 8, 8)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    mix = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, num_classes=6, label_smoothing=0.0)
    mixed, target = mix(images, labels, np.random.default_rng(0))
    lam = float(rng.beta(0.8, 0.8))  # the draw Mixup made from the same seed
    assert torch.allclose(mixed, images * lam + images.flip(0) * (1 - lam))
    assert torch.allclose(target.sum(1), torch.ones(6))
    assert target[0, 0] == pytest.approx(lam) and target[0, 5] == pytest.approx(1 - lam)

    cut = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=6, label_smoothing=0.1)
    pasted, soft = cut(images, labels, np.random.default_rng(1))
    from_other = (pasted == images.flip(0)).all(1) & (pasted != images).any(1)  # [B, H, W]
    area = from_other[0].float().mean().item()
    assert soft[0, 5] - 0.1 / 6 == pytest.approx(area * 0.9, abs=1e-6)  # label share = pasted area
    assert torch.allclose(soft.sum(1), torch.ones(6))


def test_topk_against_sorting() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 10, generator=gen)
    labels = torch.randint(0, 10, (200,), generator=gen)
    ranks = (logits > logits.gather(1, labels[:, None])).sum(1)  # how many classes beat the label
    assert topk_correct(logits, labels) == [int((ranks < 1).sum()), int((ranks < 5).sum())]
    assert topk_correct(logits[:, :3], labels.clamp(max=2))[1] == 200  # k capped at the class count


def test_ema_follows_the_formula() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    ema = ModelEma(model, decay=0.9)
    before, stats_before = ema.module[0].weight.clone(), ema.module[1].running_mean.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model(torch.randn(4, 3))  # moves the BN running statistics and its batch counter
    ema.update(model)
    assert torch.allclose(ema.module[0].weight, 0.9 * before + 0.1 * model[0].weight)
    assert torch.allclose(ema.module[1].running_mean, 0.9 * stats_before + 0.1 * model[1].running_mean)
    assert ema.module[1].num_batches_tracked == model[1].num_batches_tracked == 1


def test_stop_flag_sets_on_usr2_and_restores_the_previous_handler() -> None:
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda s, f: seen.append(s))
    try:
        with StopFlag() as stop:
            assert not stop.requested
            os.kill(os.getpid(), signal.SIGUSR2)
            assert stop.requested and stop.signum == signal.SIGUSR2
        assert seen == []  # ours took it, not the previous handler
        os.kill(os.getpid(), signal.SIGUSR2)
        assert seen == [signal.SIGUSR2]  # and the previous one is back
    finally:
        signal.signal(signal.SIGUSR2, previous)


class _FakeEngine:
    """Writes what DeepSpeed's save_checkpoint would, as DeepSpeed does: a file in the tag
    directory through its checkpoint engine (DeepSpeed's real TorchCheckpointEngine)."""

    def __init__(self) -> None:
        from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

        self.checkpoint_engine = TorchCheckpointEngine()

    def save_checkpoint(self, save_dir: str, tag: str, client_state: dict, save_latest: bool) -> None:
        assert save_latest is False  # `latest` is ours, written atomically after COMPLETE
        path = Path(save_dir) / tag
        path.mkdir(parents=True, exist_ok=True)
        self.checkpoint_engine.save({"w": torch.ones(2)}, str(path / "mp_rank_00_model_states.pt"))


def test_rotation_keeps_last_k_and_the_best(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, DistEnv(0, 1, 0, torch.device("cpu")), keep_last=2, keep_best=True)
    manager.register_engine(_FakeEngine())
    for step in (10, 20, 30):
        manager.save(step)
    manager.mark_best(tag_for(20), 50.0, 2)
    for step in (40, 50):
        manager.save(step)
    assert manager.complete_tags() == [tag_for(20), tag_for(40), tag_for(50)]
    assert (manager.dir / LATEST).read_text().strip() == tag_for(50)
    (manager.dir / "step_00000060").mkdir()  # a save killed before COMPLETE
    manager.remove_incomplete()
    assert not (manager.dir / "step_00000060").exists()
    assert all((manager.dir / t / COMPLETE).is_file() for t in manager.complete_tags())


def test_threads_per_rank_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from vigsp.train.distributed import cpu_threads_per_rank

    for key in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert cpu_threads_per_rank() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert cpu_threads_per_rank() == 4  # two ranks on this machine: four cores each
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert cpu_threads_per_rank() == 3  # what Slurm gave the task wins
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert cpu_threads_per_rank() is None  # the user's setting: torch already follows it


def test_overrides_may_follow_flags() -> None:
    import argparse

    from vigsp.cli import parse_command_args
    from vigsp.data.cli import add_arguments as data_arguments
    from vigsp.train.cli import add_arguments as train_arguments

    parser = argparse.ArgumentParser()
    train_arguments(parser)
    args = parse_command_args(parser, ["quickstart", "--resume", "never", "run.epochs=1", "optim.lr=1e-3"])
    assert (args.config, args.resume) == ("quickstart", "never")
    assert args.overrides == ["run.epochs=1", "optim.lr=1e-3"]
    data = argparse.ArgumentParser()
    data_arguments(data)  # sub-commands: parsed the plain way
    assert parse_command_args(data, ["prepare", "fashion-mnist", "--size", "32"]).size == 32
