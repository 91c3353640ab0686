"""``vigsp predict`` and its DALI-free preprocessing (vigsp/inference/preprocess.py) on real
images: against the DALI eval pipeline of the same run config, and against ``vigsp eval``."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fixtures.datasets import fashion_mnist  # noqa: F401 (fixture)
from tests.fixtures.images import library_jpegs
from tests.fixtures.tiny_training import data_fixture  # noqa: F401 (fixture)
from tests.fixtures.trained_run import trained_fixture  # noqa: F401 (fixture)
from tests.test_eval import vigsp_eval
from tests.test_inference_weights import hostile_weights
from vigsp.config.loading import load_config
from vigsp.data.pipelines import GRAPH_OUTPUTS, build_pipeline, dali_superpixel_step
from vigsp.inference.preprocess import Preprocessing, decode

pytestmark = [pytest.mark.dali]


def _dali_eval(files: list[str], data) -> dict[str, list[np.ndarray]]:
    data = data.model_copy(update={"batch_size": len(files)})
    pipe = build_pipeline(
        "eval", files=files, sample_ids=range(len(files)), shard_id=0, num_shards=1, cfg=data, decoder="cpu",
        step=dali_superpixel_step(data.superpixel), seed=0, device_id=None, outputs=GRAPH_OUTPUTS,
    )  # fmt: skip
    outputs = pipe.run()
    return {
        name: [np.array(out[i]) for i in range(len(files))]
        for name, out in zip(GRAPH_OUTPUTS, outputs, strict=True)
    }


def _native(files: list[str], data):
    prep = Preprocessing(data)
    return prep.batch([prep.prepare(decode(f)) for f in files], files)


def _fashion_files(root: Path, count: int) -> list[str]:
    return [str(p) for p in sorted((root / "val").glob("*/*.jpg"))[:: 10_000 // count][:count]]


def test_at_the_model_size_the_preprocessing_equals_the_dali_pipeline(fashion_mnist):  # noqa: F811
    """28 px Fashion-MNIST at the quickstart's settings: no resize, so everything is equal."""
    data = load_config("quickstart").data
    files = _fashion_files(fashion_mnist.out, 48)
    dali, native = _dali_eval(files, data), _native(files, data)
    for i in range(len(files)):
        n = int(dali["node_counts"][i])
        assert n == int(native.node_counts[i])
        assert (dali["label_maps"][i] == native.label_maps[i].numpy()).all()
        assert (dali["pixel_mask"][i] == native.pixel_mask[i].numpy()).all()
        assert (dali["edges"][i] == native.edges[i].numpy()).all()
        assert (dali["node_features"][i] == native.node_features[i].numpy()).all()
        # Normalisation: the same float32 formula; DALI may fuse it differently (1 ulp).
        np.testing.assert_allclose(dali["images"][i], native.images[i].numpy(), rtol=0, atol=1e-6)


def test_after_a_resize_the_preprocessing_is_close_to_the_dali_pipeline(fashion_mnist):  # noqa: F811
    """A resize is torch's antialiased bicubic here and DALI's resampler there: the stated
    tolerance (README, preprocess.py) is what this measures: pixels within a few levels on
    average, and the superpixel boundaries mostly where DALI's are."""
    cases = [
        (load_config("tiny_test").data, _fashion_files(fashion_mnist.out, 24)),  # 28 -> 32 upscale
        (
            load_config("quickstart", ["data.image_size=224", "data.eval_crop_fraction=0.875",
                                       "data.superpixel.n_segments=196", "data.max_nodes=256",
                                       "data.max_edges=2048"]).data,
            [str(p) for p in library_jpegs()],  # 427-1411 px photographs -> 256 -> crop 224
        ),
    ]  # fmt: skip
    for data, files in cases:
        dali, native = _dali_eval(files, data), _native(files, data)
        scale = 255 * np.asarray(data.std, np.float32)[:, None, None]
        for i in range(len(files)):
            levels = np.abs(dali["images"][i] - native.images[i].numpy()) * scale
            # Boundaries: the share of neighbouring pixel pairs both call same- or other-superpixel.
            agree = (dali["pixel_mask"][i] == native.pixel_mask[i].numpy()).mean()
            # Measured: mean 0.004-0.08 levels (28 -> 32), 0.001-0.67 (photos); max 1-3 and 1-30.
            assert levels.mean() < 1.0 and levels.max() <= 32, (files[i], levels.mean(), levels.max())
            assert agree >= 0.85, (files[i], agree)  # measured 0.87-1.0


def _predict(cwd: Path, *args: str, expect: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "vigsp.cli", "predict", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == expect, f"exit {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
@pytest.mark.distributed
def test_predict_agrees_with_eval_and_skips_what_it_cannot_decode(trained, data, tmp_path):
    out = trained / "eval_for_predict"
    vigsp_eval(trained, "runs/r", "--no-mlflow", "--out", str(out))
    with open(out / "predictions.csv") as handle:
        expected = {
            row["file"]: (row["predicted"], float(row["probability"])) for row in csv.DictReader(handle)
        }
    # The validation images, plus a truncated JPEG and a text file named .jpg among them.
    folder = tmp_path / "images"
    for relative in expected:
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(data.root / "val" / relative, folder / relative)
    good = folder / next(iter(expected))
    (folder / "cut.jpg").write_bytes(good.read_bytes()[:200])
    (folder / "notes.jpg").write_text("not an image\n")
    done = _predict(trained, "runs/r", str(folder), "--json", "--topk", "3")
    result = json.loads(done.stdout)
    got = {str(Path(p["file"]).relative_to(folder)): p["top"] for p in result["predictions"]}
    assert set(got) == set(expected)
    for name, (label, probability) in expected.items():
        assert got[name][0]["class"] == label, name
        assert abs(got[name][0]["probability"] - probability) <= 1e-5 + 5e-7, name  # CSV has 6 decimals
        assert len(got[name]) == 3
    assert {Path(f["file"]).name for f in result["failed"]} == {"cut.jpg", "notes.jpg"}
    assert "cut.jpg" in done.stderr and "notes.jpg" in done.stderr and "Traceback" not in done.stderr
    strict = _predict(trained, "runs/r", str(folder), "--strict", expect=1)
    assert "cut.jpg" in strict.stderr and "notes.jpg" in strict.stderr and not strict.stdout.strip()


@pytest.mark.slow
@pytest.mark.distributed
def test_predict_refuses_weights_that_would_run_code(trained, tmp_path):
    legacy = tmp_path / "legacy_run"
    legacy.mkdir()
    shutil.copy(trained / "runs" / "r" / "config.yaml", legacy / "config.yaml")
    marker = tmp_path / "code_ran"
    hostile_weights(legacy / "final_model.pt", marker)
    image = next((trained / "runs" / "r").parent.parent.glob("**/*.jpg"), None) or library_jpegs()[0]
    done = _predict(trained, str(legacy), str(image), expect=2)
    assert "pickled Python objects" in done.stderr and "final_model.pt" in done.stderr
    assert not marker.exists()


def test_decode_names_what_it_cannot_read(tmp_path):
    from vigsp.inference.preprocess import UnreadableImageError

    (tmp_path / "x.jpg").write_bytes(b"\xff\xd8\xff garbage")
    for source, name in (
        (tmp_path / "x.jpg", "x.jpg"),
        (b"nope", "4 bytes"),
        (tmp_path / "gone.png", "gone.png"),
    ):
        with pytest.raises(UnreadableImageError, match=name):
            decode(source)
    with pytest.raises(UnreadableImageError, match="uint8"):
        decode(np.zeros((4, 4, 3), np.float32))
    assert decode(np.zeros((5, 6), np.uint8)).shape == (5, 6, 3)
    assert torch.equal(
        torch.from_numpy(decode(np.full((2, 2, 4), 7, np.uint8))), torch.full((2, 2, 3), 7, dtype=torch.uint8)
    )
