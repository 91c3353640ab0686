"""Inference throughput on CPU: ``vigsp predict``, the served MLflow model, and the eval pipeline.

The same exported model (random weights: speed does not depend on them) classifies the same
image files in four ways, taking turns:

* **eval**: the anchor. ``vigsp eval``'s path: the run's DALI eval pipeline (decode, resize,
  centre crop, the superpixel operator, padding, batching) feeding the model;
* **predict**: ``vigsp predict``'s path, ``vigsp.inference.predictor.Predictor``: Pillow decode,
  torch resize, the C++ superpixel core through pybind11, the same model, in-process;
* **pyfunc, in-process**: the logged MLflow model loaded with ``mlflow.pyfunc.load_model`` and
  given a DataFrame of encoded files (predict's code behind MLflow's schema checks);
* **served**: ``mlflow models serve --env-manager local`` on that model folder (one worker),
  answering JSON requests of 64 base64-encoded files each over HTTP on 127.0.0.1: what a
  client of the served model sees, JSON and base64 included.

Each also runs without its model ("data only": the eval pipeline's batches, predict's
preprocessing) to show where the time goes. Every figure is images/s (median of the repeats)
and its ratio to eval in the same run, for two cases:

* the quickstart's model (``vig_sp_tiny``, 28x28, 49 segments) on the prepared Fashion-MNIST
  validation images (prepared into a temporary folder if --fashion-mnist does not exist);
* ViG-SP196-Ti (``configs/imagenet1k/vig_sp196.yaml``, 224x224, 196 segments) on 300-500 px
  JPEG crops of real photos (as in benchmarks/pipeline.py), in fp32.

    PYTHONPATH=. python benchmarks/predict.py            # about 4 minutes on 2 cores
    PYTHONPATH=. python benchmarks/predict.py --quick    # fewer images and repeats (noisy)
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import torch
from rich.console import Console
from rich.table import Table

from benchmarks.pipeline import photo_folder
from tests.fixtures.mlflow_server import free_port

BATCH = 64
WAYS = (
    "eval",
    "eval, data only",
    "predict",
    "predict, data only",
    "pyfunc, in-process",
    "served (HTTP)",
)
FP32 = ("deepspeed.bf16=false",)  # the ImageNet configs train in bf16; CPU inference runs fp32
MIN_SECONDS = 2.0  # each measurement repeats whole passes for at least this long


@dataclass(frozen=True)
class Case:
    name: str
    config: str
    val_dir: Path  # a class-folder tree
    overrides: tuple[str, ...] = ()


def export_random_model(case: Case, out: Path) -> Path:
    """An exported model of ``case``'s config with freshly initialised weights."""
    from vigsp.config.loading import load_config
    from vigsp.config.model_inputs import model_arguments, resolve_model_inputs
    from vigsp.data.folders import resolve_classes
    from vigsp.inference.exported import write_exported
    from vigsp.models import create_model

    probe = load_config(case.config, [f"data.val_dir={case.val_dir}", f"data.train_dir={case.val_dir}"])
    classes = resolve_classes(probe.data)
    overrides = [
        f"data.val_dir={case.val_dir}",
        f"data.train_dir={case.val_dir}",
        f"data.batch_size={BATCH}",
        f"model.num_classes={len(classes)}",
        *case.overrides,
    ]
    cfg = resolve_model_inputs(load_config(case.config, overrides))
    torch.manual_seed(0)
    model = create_model(cfg.model.name, **model_arguments(cfg))
    return write_exported(out, cfg, classes, model.state_dict())


class Server:
    """``mlflow models serve`` on a model folder, on a free port of 127.0.0.1."""

    def __init__(self, model_dir: Path, log: Path) -> None:
        self.port = free_port()
        bin_dir = Path(sys.executable).parent  # uvicorn is started from PATH
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
        command = [str(bin_dir / "mlflow"), "models", "serve", "-m", str(model_dir), "--env-manager", "local"]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        self.log = log
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 180
        while not self._answers("/ping"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow models serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)

    def _answers(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2):
                return True
        except (urllib.error.URLError, OSError):
            return False

    def predict(self, encoded: list[str]) -> list[dict]:
        rows = [[image] for image in encoded]
        body = json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()
        url = f"http://127.0.0.1:{self.port}/invocations"
        request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())["predictions"]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            self.process.wait(timeout=30)


def passes(
    exported: Path, pyfunc_dir: Path, files: list[Path], served: Server
) -> dict[str, Callable[[], int]]:
    """One timed pass over ``files`` per way; each returns how many images it classified."""
    from vigsp.config.model_inputs import declared_inputs
    from vigsp.data.loader import EvalLoader
    from vigsp.inference.evaluation import predict_batches
    from vigsp.inference.predictor import Predictor
    from vigsp.inference.preprocess import decode
    from vigsp.inference.source import resolve_model

    source = resolve_model(str(exported))
    inputs = declared_inputs(source.cfg)
    loader = EvalLoader(source.cfg.data, classes=source.classes, outputs=inputs.pipeline_outputs)
    assert len(loader.index) == len(files), (len(loader.index), len(files))
    model = source.build_model(torch.device("cpu"))
    predictor = Predictor(source, batch_size=BATCH)
    named = [(str(p), p) for p in files]
    encoded = [base64.b64encode(p.read_bytes()).decode() for p in files]

    def eval_pass() -> int:
        cpu = torch.device("cpu")
        with torch.no_grad():
            return len(predict_batches(model, loader, inputs.names, cpu, source.dtype, len(source.classes)))

    def eval_data_only() -> int:
        return sum(len(batch.labels) for batch in loader)

    def predict_pass() -> int:
        predictions, failures = predictor.predict(named)
        assert not failures, failures
        return len(predictions)

    def predict_data_only() -> int:
        prep = predictor.preprocessing
        for start in range(0, len(files), BATCH):
            chunk = files[start : start + BATCH]
            prep.batch([prep.prepare(decode(p)) for p in chunk], [str(p) for p in chunk])
        return len(files)

    pyfunc = mlflow.pyfunc.load_model(str(pyfunc_dir))
    frame = pd.DataFrame({"image": [p.read_bytes() for p in files]})

    def pyfunc_pass() -> int:
        answers = pyfunc.predict(frame)
        assert answers["class"].notna().all()
        return len(answers)

    def served_pass() -> int:
        answers = []
        for start in range(0, len(encoded), BATCH):
            answers += served.predict(encoded[start : start + BATCH])
        assert all(a["class"] is not None for a in answers), answers[:3]
        return len(answers)

    ways = (eval_pass, eval_data_only, predict_pass, predict_data_only, pyfunc_pass, served_pass)
    return dict(zip(WAYS, ways, strict=True))


def measure(case: Case, count: int, repeats: int, work: Path, console: Console) -> dict[str, list[float]]:
    """images/s of every way, ``repeats`` times each, after one warm-up pass each."""
    from vigsp.inference.pyfunc_model import save_pyfunc

    folder = work / case.name.replace(" ", "_")
    val = folder / "val"
    files = _subset(case.val_dir, val, count)
    case = Case(case.name, case.config, val, case.overrides)
    exported = export_random_model(case, folder / "model")
    pyfunc = save_pyfunc(exported, folder / "mlflow_model", example=files[0].read_bytes())
    console.print(f"[dim]{case.name}: {len(files)} images, starting mlflow models serve...[/]")
    served = Server(pyfunc, folder / "serve.log")
    try:
        ways = passes(exported, pyfunc, files, served)
        for run in ways.values():
            run()
        rates: dict[str, list[float]] = {way: [] for way in ways}
        for _ in range(repeats):
            for way, run in ways.items():
                rates[way].append(_rate(run))
    finally:
        served.stop()
    return rates


def _rate(run: Callable[[], int]) -> float:
    """images/s of whole passes repeated for at least MIN_SECONDS (so that the batches DALI
    prefetched before the clock started weigh little)."""
    done, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < MIN_SECONDS or not done:
        done += run()
    return done / elapsed


def _subset(source: Path, dest: Path, count: int) -> list[Path]:
    """The first ``count`` files of a class-folder tree (round robin over the classes), copied."""
    classes = sorted(p for p in source.iterdir() if p.is_dir())
    per_class = [sorted(c.iterdir()) for c in classes]
    picked: list[Path] = []
    for i in range(max(len(f) for f in per_class)):
        picked += [f[i] for f in per_class if i < len(f)]
    for path in picked[:count]:
        target = dest / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    # in the order the eval index lists them (class folders, then file names), for equal passes
    return sorted((p for p in dest.rglob("*") if p.is_file()), key=lambda p: (p.parent.name, p.name))


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--fashion-mnist", type=Path, default=Path("data/fashion_mnist"))
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats")
    args = parser.parse_args()
    from vigsp.data.fashion_mnist import prepare_fashion_mnist

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    console = Console()
    repeats = 2 if args.quick else 3
    medians: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fashion = args.fashion_mnist
        if not (fashion / ".vigsp-prepared.json").is_file():
            fashion = prepare_fashion_mnist(out=work / "fashion_mnist", progress=False).out
        photos = photo_folder(work / "photos", 64)
        cases = [
            (Case("vig_sp_tiny 28x28", "quickstart", fashion / "val"), 256 if args.quick else 1024),
            (Case("ViG-SP196-Ti 224x224", "imagenet1k/vig_sp196", photos, FP32), 32 if args.quick else 64),
        ]
        for case, count in cases:
            rates = measure(case, count, repeats, work, console)
            medians[case.name] = {way: statistics.median(r) for way, r in rates.items()}
    table = Table(title=f"images/s and ratio to eval, same run (batch {BATCH}, {os.cpu_count()} cores)")
    table.add_column("way")
    for name in medians:
        table.add_column(name, justify="right")
    for way in WAYS:
        cells = [f"{m[way]:,.0f} ({m[way] / m['eval']:.2f}x)" for m in medians.values()]
        table.add_row(way, *cells)
    console.print(table)
    machine = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    console.print(f"[dim]{machine}, torch {torch.__version__}, {threads} torch threads, {repeats} repeats[/]")


if __name__ == "__main__":
    main()
