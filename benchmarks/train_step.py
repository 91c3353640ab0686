"""Training-step throughput of DeepSpeed ZeRO 0/1/2 (and bf16) for a model, on this machine.

    python benchmarks/train_step.py                      # tiny ViG-SP, 2 ranks on the CPU, ~2 min
    python benchmarks/train_step.py --model vig_sp_tiny --world 2 --batch 64 --steps 20 --bf16

Each setting runs in ``--world`` real processes (gloo on the CPU, NCCL on GPUs), through the same
``deepspeed.initialize`` config and optimizer that ``vigsp train`` builds, on one fixed batch of
superpixel inputs per rank (the data pipeline is timed by benchmarks/pipeline.py). Reported:
images/s over all ranks (median of ``--repeats`` timed windows of ``--steps`` optimizer steps,
after warm-up) and the ratio to ZeRO 0 fp32 measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from vigsp.train.distributed import free_port

SETTINGS = [(0, False), (1, False), (2, False)]


def worker(args: argparse.Namespace) -> None:
    """One rank: build the engine as the trainer does, time optimizer steps on a fixed batch."""
    import deepspeed
    import torch
    import torch.nn.functional as F

    from vigsp.config import load_config, to_deepspeed_config
    from vigsp.models import create_model
    from vigsp.models.example_inputs import example_inputs
    from vigsp.train.distributed import init_process_group, read_env
    from vigsp.train.optim import build_optimizer
    from vigsp.train.setup import match_buffers_to_weights

    env = read_env()
    init_process_group(env)
    cfg = load_config(
        "quickstart",
        [
            f"model.name={args.model}",
            f"data.batch_size={args.batch}",
            f"deepspeed.zero_stage={args.zero}",
            f"deepspeed.bf16={str(args.bf16).lower()}",
        ],
    )
    torch.manual_seed(0)
    model = create_model(cfg.model.name, num_classes=10).to(env.device)
    engine, *_ = deepspeed.initialize(
        model=model,
        optimizer=build_optimizer(model, cfg.optim, cfg.optim.lr),
        config=to_deepspeed_config(cfg, env.world_size),
        dist_init_required=False,
    )
    match_buffers_to_weights(engine.module)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    inputs = [
        x.to(env.device).to(dtype) if x.is_floating_point() else x.to(env.device)
        for x in example_inputs(model, args.batch, seed=env.rank)
    ]
    labels = torch.randint(0, 10, (args.batch,), device=env.device)

    def step() -> None:
        loss = F.cross_entropy(engine(*inputs).float(), labels)
        engine.backward(loss)
        engine.step()

    for _ in range(3):
        step()
    rates = []
    for _ in range(args.repeats):
        torch.distributed.barrier()
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        torch.distributed.barrier()
        rates.append(args.steps * args.batch * env.world_size / (time.perf_counter() - started))
    if env.rank == 0:
        print("RESULT " + json.dumps({"img_per_s": statistics.median(rates)}), flush=True)


def run_setting(args: argparse.Namespace, zero: int, bf16: bool) -> float:
    port = free_port()
    threads = max(1, (os.cpu_count() or 2) // args.world)
    procs = []
    for rank in range(args.world):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(args.world),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
            "OMP_NUM_THREADS": str(threads),
        }
        cmd = [sys.executable, __file__, "--worker", f"--zero={zero}", *(["--bf16"] if bf16 else [])]
        cmd += [f"--model={args.model}", f"--batch={args.batch}", f"--steps={args.steps}"]
        cmd += [f"--repeats={args.repeats}"]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        procs.append(subprocess.Popen(cmd, env=env, text=True, **pipes))
    outputs = [p.communicate() for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        if proc.returncode:
            raise SystemExit(f"ZeRO {zero} bf16={bf16} failed:\n{err[-3000:]}")
    line = next(x for x in outputs[0][0].splitlines() if x.startswith("RESULT "))
    return float(json.loads(line[len("RESULT ") :])["img_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vig_sp_tiny")
    parser.add_argument("--world", type=int, default=2, help="ranks (processes)")
    parser.add_argument("--batch", type=int, default=64, help="images per rank per step")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per timed window")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows; the median is reported")
    parser.add_argument("--bf16", action="store_true", help="also time ZeRO 0/2 with bf16")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--zero", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    from rich.console import Console
    from rich.table import Table

    settings = SETTINGS + ([(0, True), (2, True)] if args.bf16 else [])
    results = {}
    for zero, bf16 in settings:
        results[(zero, bf16)] = run_setting(args, zero, bf16)
        print(f"ZeRO {zero} {'bf16' if bf16 else 'fp32'}: {results[(zero, bf16)]:.0f} img/s", file=sys.stderr)
    anchor = results[(0, False)]
    table = Table(
        title=f"{args.model}: training steps, {args.world} ranks x batch {args.batch} "
        f"({Path(__file__).name}, same run)"
    )
    for column in ("ZeRO stage", "precision", "img/s (all ranks)", "vs ZeRO 0 fp32"):
        table.add_column(column, justify="right")
    for (zero, bf16), rate in results.items():
        table.add_row(str(zero), "bf16" if bf16 else "fp32", f"{rate:,.0f}", f"{rate / anchor:.2f}x")
    Console().print(table)


if __name__ == "__main__":
    main()
