"""Training-pipeline throughput on CPU: the DALI pipeline with and without the superpixel operator.

For each image size the same pipeline (read, decode, random resized crop, flip, colour jitter,
normalise, batch) runs without and with ``fn.vigsp.superpixel_graph`` (SLIC, SLIC with
``subsample_stride=3``, and the grid ablation), on every core, batch 64, the variants taking
turns. The graph variants carry what training carries (label maps, node features and counts:
the ViG-SP models' ``ModelInputs.pipeline_outputs``); "SLIC, all outputs" also pads and carries
the RAG edges and pixel masks.
The figure that matters is each ratio against the pipeline without the operator, in the same
run (target: >= 0.6, i.e. the graph costs at most 40 % of the input throughput).

* 224x224: ImageNet-like JPEGs, random 300-500 px crops of the real photos that scikit-image and
  scikit-learn ship, n_segments 196 (the ImageNet configs);
* 28x28 and 56x56: the prepared Fashion-MNIST (``vigsp data prepare fashion-mnist``; prepared
  into a temporary folder if --fashion-mnist does not exist), n_segments 49 (the quickstart).

    python benchmarks/pipeline.py             # about 2 minutes on 2 cores
    python benchmarks/pipeline.py --quick     # shorter turns, fewer repeats (noisy)

Without the compiled operator only the baseline rows are measured, and the reason is printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

TARGET_RATIO = 0.6
BATCH = 64
# column title -> data.superpixel settings (besides n_segments); None = no superpixel operator
VARIANTS: dict[str, dict | None] = {
    "no graph": None,
    "SLIC": {"method": "slic"},
    "SLIC stride 3": {"method": "slic", "subsample_stride": 3},
    "grid": {"method": "grid"},
    "SLIC, all outputs": {"method": "slic"},
}
ALL_OUTPUTS = {"SLIC, all outputs"}  # the others carry only what the model reads


@dataclass(frozen=True)
class Case:
    name: str
    root: Path  # a class-folder tree
    size: int
    n_segments: int


def photo_folder(dest: Path, count: int = 96) -> Path:
    """``count`` JPEGs (quality 90) of random 300-500 px crops of real photos, in 4 class folders."""
    import skimage
    import sklearn.datasets
    from PIL import Image

    sources = [Path(skimage.__file__).parent / "data" / n for n in ("rocket.jpg", "retina.jpg")]
    sources += sorted((Path(sklearn.datasets.__file__).parent / "images").glob("*.jpg"))
    photos = [Image.open(p).convert("RGB") for p in sources]
    rng = np.random.default_rng(0)
    for i in range(count):
        photo = photos[i % len(photos)]
        width, height = (int(v) for v in rng.integers(300, 501, 2))
        scale = max(width / photo.width, height / photo.height, 1.0)
        if scale > 1:
            photo = photo.resize((round(photo.width * scale), round(photo.height * scale)))
        left = int(rng.integers(0, photo.width - width + 1))
        top = int(rng.integers(0, photo.height - height + 1))
        folder = dest / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        photo.crop((left, top, left + width, top + height)).save(folder / f"{i:04d}.jpg", quality=90)
    return dest


# Upper bound on any variant's rate, to size the epochs so that no stream runs dry mid-measurement.
MAX_RATE = 60_000


def batch_streams(case: Case, variants: list[str], seconds: float, repeats: int) -> dict:
    """One training-batch stream per variant (see VARIANTS), warmed up and long enough."""
    from vigsp.data.config import DataConfig
    from vigsp.data.folders import load_split
    from vigsp.data.loader import TrainLoader
    from vigsp.data.pipelines import GRAPH_OUTPUTS
    from vigsp.models import get_spec

    streams = {}
    for variant in variants:
        cfg = DataConfig(
            train_dir=case.root,
            val_dir=case.root,
            image_size=case.size,
            batch_size=BATCH,
            num_threads=os.cpu_count() or 1,
            augmentation={"color_jitter": 0.4},
            superpixel=None
            if VARIANTS[variant] is None
            else {**VARIANTS[variant], "n_segments": case.n_segments},
        )
        index = load_split(cfg, "train")
        # Enough (repeated) files that one epoch covers warm-up and every timed batch.
        needed = (int(MAX_RATE * seconds * repeats / BATCH) + repeats + 4) * BATCH
        index = index.subset(np.resize(np.arange(len(index)), max(needed, len(index))))
        model_outputs = get_spec("vig_sp_tiny").inputs().pipeline_outputs
        outputs = GRAPH_OUTPUTS if variant in ALL_OUTPUTS else model_outputs
        stream = TrainLoader(cfg, index=index, outputs=outputs).iter_epoch(0)
        for _ in range(3):  # warm-up: pipeline start, prefetch queue filled
            next(stream)
        streams[variant] = stream
    return streams


def throughputs(case: Case, variants: list[str], seconds: float, repeats: int) -> dict:
    """Median images per second of each variant, each turn taking whole batches for at least
    ``seconds`` (a fixed batch count would time 28 px pipelines over a few tens of milliseconds).
    The variants take turns, so that a slow spell of the machine (other jobs) hits all of them
    alike and the ratios stay fair."""
    streams = batch_streams(case, variants, seconds, repeats)
    rates: dict[str, list[float]] = {variant: [] for variant in variants}
    for _ in range(repeats):
        for variant, stream in streams.items():
            batches, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds:
                next(stream)
                batches += 1
            rates[variant].append(batches * BATCH / elapsed)
    return {variant: statistics.median(values) for variant, values in rates.items()}


def operator_problem() -> str | None:
    """Why the superpixel operator cannot run in a (checkpointing) training pipeline here, or None."""
    try:
        from nvidia.dali import fn, pipeline_def, types

        from vigsp.superpixels import dali as dali_plugin

        @pipeline_def(batch_size=1, num_threads=1, device_id=None, enable_checkpointing=True)
        def probe():
            image = fn.cast(fn.random.uniform(range=[0, 255], shape=[16, 16, 3]), dtype=types.UINT8)
            return tuple(dali_plugin.superpixel_graph(image, n_segments=4))

        pipe = probe()
        pipe.build()
        pipe.run()
    except Exception as err:  # missing build, version mismatch, no checkpointing: report, measure the rest
        return f"{type(err).__name__}: {err}"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.3 s turns, 3 repeats (noisy)")
    parser.add_argument("--fashion-mnist", type=Path, default=Path("data/fashion_mnist"))
    args = parser.parse_args()
    seconds, repeats = (0.3, 3) if args.quick else (1.0, 7)

    from vigsp.data.fashion_mnist import prepare_fashion_mnist

    console = Console(width=120)
    problem = operator_problem()
    with tempfile.TemporaryDirectory() as tmp:
        fashion = args.fashion_mnist
        if not (fashion / ".vigsp-prepared.json").is_file():
            fashion = prepare_fashion_mnist(out=Path(tmp) / "fashion_mnist", progress=False).out
        cases = [
            Case("photos", photo_folder(Path(tmp) / "photos"), 224, 196),
            Case("Fashion-MNIST", fashion / "val", 28, 49),
            Case("Fashion-MNIST x2", fashion / "val", 56, 49),
        ]
        graphs = [name for name, settings in VARIANTS.items() if settings is not None]
        table = Table(title=f"CPU training pipeline, batch {BATCH}, {os.cpu_count()} DALI threads (img/s)")
        for column in ("data", "size", "segments", "no graph", *(f"{g}\nimg/s  ratio" for g in graphs)):
            table.add_column(column, justify="left" if column == "data" else "right")
        for case in cases:
            variants = ["no graph"] if problem else list(VARIANTS)
            rates = throughputs(case, variants, seconds, repeats)
            base = rates["no graph"]
            row = [case.name, f"{case.size}x{case.size}", str(case.n_segments), f"{base:,.0f}"]
            for graph in graphs:
                if problem:
                    row.append("-")
                    continue
                ratio = rates[graph] / base
                row.append(f"{rates[graph]:,.0f}  {ratio:.2f}" + ("" if ratio >= TARGET_RATIO else " (!)"))
            table.add_row(*row)
    console.print(table)
    console.print(
        f"ratio = with graph / without, same run; target >= {TARGET_RATIO}, (!) = below it. "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores."
    )
    if problem:
        console.print(f"[red]superpixel operator unavailable, graph rows not measured:[/red] {problem}")


if __name__ == "__main__":
    main()
