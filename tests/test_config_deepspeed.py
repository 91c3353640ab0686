"""The DeepSpeed config dict: batch arithmetic, explicit clipping, and DeepSpeed's own acceptance of it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from vigsp.config import global_batch_size, load_config, scaled_lr, to_deepspeed_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("world_size", [1, 2, 3, 8, 64])
@pytest.mark.parametrize("accumulation", [1, 2, 4])
def test_batch_sizes_are_consistent(world_size: int, accumulation: int) -> None:
    cfg = load_config(
        "quickstart", [f"deepspeed.gradient_accumulation_steps={accumulation}", "data.batch_size=48"]
    )
    ds = to_deepspeed_config(cfg, world_size)
    assert ds["train_micro_batch_size_per_gpu"] == 48
    assert ds["gradient_accumulation_steps"] == accumulation
    assert ds["train_batch_size"] == 48 * accumulation * world_size == global_batch_size(cfg, world_size)


def test_precision_zero_and_logging_keys() -> None:
    cfg = load_config("imagenet100/vig_sp196", ["deepspeed.zero_stage=2"])
    ds = to_deepspeed_config(cfg, 4)
    assert ds["zero_optimization"] == {"stage": 2}
    assert ds["bf16"] == {"enabled": True}
    assert ds["fp16"] == {"enabled": False}
    assert ds["steps_per_print"] >= 10**9
    assert ds["wall_clock_breakdown"] is False
    # The engine builds the optimizer and the scheduler itself and passes them to deepspeed.initialize.
    assert "optimizer" not in ds
    assert "scheduler" not in ds


@pytest.mark.parametrize(("setting", "written"), [("null", 0.0), ("0", 0.0), ("5", 5.0), ("0.5", 0.5)])
def test_gradient_clipping_is_always_written(setting: str, written: float) -> None:
    # Left out, DeepSpeed would clip at its default of 1.0.
    ds = to_deepspeed_config(load_config("quickstart", [f"deepspeed.gradient_clipping={setting}"]), 1)
    assert ds["gradient_clipping"] == written
    assert isinstance(ds["gradient_clipping"], float)


def test_lr_scales_linearly_from_the_base_batch() -> None:
    cfg = load_config("imagenet100/vig_ti")  # lr 2e-3 at 1024; 128 per GPU x 2 accumulation steps
    assert scaled_lr(cfg, 4) == pytest.approx(2e-3)
    assert scaled_lr(cfg, 8) == pytest.approx(4e-3)
    assert scaled_lr(cfg, 1) == pytest.approx(2e-3 / 4)
    quickstart = load_config("quickstart")  # base_batch_size null: lr as written
    assert scaled_lr(quickstart, 16) == quickstart.optim.lr


@pytest.mark.parametrize("world_size", [0, -1, 1.5, True])
def test_world_size_must_be_a_positive_int(world_size: object) -> None:
    with pytest.raises(ValueError, match="world_size must be a positive int"):
        to_deepspeed_config(load_config("quickstart"), world_size)  # type: ignore[arg-type]


# --- DeepSpeed itself reads the dict (child process: it initialises torch.distributed) ----------------

# (config, world size, overrides) checked by DeepSpeed's own config parser and batch assertions.
PARSED = [
    ("quickstart", 1, []),
    ("quickstart", 3, ["deepspeed.gradient_accumulation_steps=4", "deepspeed.gradient_clipping=5"]),
    ("imagenet100/vig_sp196", 4, []),
    ("imagenet100/vig_sp196", 8, ["deepspeed.zero_stage=2", "deepspeed.gradient_clipping=1.5"]),
    ("imagenet1k/vig_sp196", 64, ["deepspeed.gradient_accumulation_steps=3"]),
]
# (zero stage, bf16) initialised for real, one training step each.
INITIALISED = [(0, False), (1, False), (2, False), (1, True)]


# Runs in a fresh interpreter (argv[1]: the JSON of PARSED and INITIALISED) and prints a JSON result.
_CHILD = """
import json, sys

import deepspeed
import torch
from deepspeed.runtime.config import DeepSpeedConfig

from vigsp.config.deepspeed_config import to_deepspeed_config
from vigsp.config.loading import load_config

parsed_cases, initialised_cases = json.loads(sys.argv[1])


class DataParallel:  # DeepSpeed reads the data-parallel size for its batch checks from an "mpu"
    def __init__(self, size):
        self.size = size

    def get_data_parallel_world_size(self):
        return self.size


deepspeed.init_distributed(dist_backend="gloo")
parsed = []
for name, world_size, overrides in parsed_cases:
    config = to_deepspeed_config(load_config(name, overrides), world_size)
    ds = DeepSpeedConfig(config, mpu=DataParallel(world_size))
    parsed.append([
        ds.world_size, ds.train_batch_size, ds.train_micro_batch_size_per_gpu, ds.gradient_accumulation_steps,
        ds.gradient_clipping, ds.zero_optimization_stage, ds.bfloat16_config.enabled,
    ])
initialised = []
for stage, bf16 in initialised_cases:
    cfg = load_config("tiny_test", [f"deepspeed.zero_stage={stage}", f"deepspeed.bf16={str(bf16).lower()}"])
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    groups = [
        {"params": [p for p in model.parameters() if p.ndim > 1], "weight_decay": 0.05},
        {"params": [p for p in model.parameters() if p.ndim <= 1], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: (step + 1) / 10)
    engine, _, _, engine_scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=to_deepspeed_config(cfg, 1)
    )
    batch = torch.randn(cfg.data.batch_size, 4, dtype=torch.bfloat16 if bf16 else torch.float32)
    loss = engine(batch).float().pow(2).mean()
    engine.backward(loss)
    engine.step()
    same = engine_scheduler is scheduler
    initialised.append([engine.gradient_clipping(), engine.train_batch_size(), same, engine.get_lr()])
print(json.dumps({"parsed": parsed, "initialised": initialised}))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # ~10 s; the first DeepSpeed start on a machine JIT-builds its shm op (~1 min)
def test_deepspeed_accepts_the_config() -> None:
    env = dict(os.environ, DS_ACCELERATOR="cpu", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps([PARSED, INITIALISED])],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    result = json.loads(child.stdout.strip().splitlines()[-1])

    for (name, world_size, overrides), seen in zip(PARSED, result["parsed"], strict=True):
        ours = to_deepspeed_config(load_config(name, overrides), world_size)
        assert seen == [
            world_size,
            ours["train_batch_size"],
            ours["train_micro_batch_size_per_gpu"],
            ours["gradient_accumulation_steps"],
            ours["gradient_clipping"],
            ours["zero_optimization"]["stage"],
            ours["bf16"]["enabled"],
        ], name

    tiny = load_config("tiny_test")
    for (stage, bf16), (clipping, batch, same_scheduler, lrs) in zip(
        INITIALISED, result["initialised"], strict=True
    ):
        assert clipping == 0.0, (stage, bf16)  # tiny_test's null clipping reached DeepSpeed as "off"
        assert batch == tiny.data.batch_size
        assert same_scheduler, "DeepSpeed must step (and checkpoint) the scheduler we pass in"
        assert lrs == pytest.approx([2e-4, 2e-4])  # LambdaLR after one step: 1e-3 * 2/10, both groups
