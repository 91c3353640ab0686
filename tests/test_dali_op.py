"""The DALI CPU operator in real CPU-only pipelines equals the pybind11 module, sample by sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.images import library_jpegs
from vigsp import superpixels as sp
from vigsp.superpixels import dali as dali_plugin

pytestmark = pytest.mark.dali

OUTPUTS = ("labels", "rag_edges", "features", "pixel_mask")


def run_pipeline(files: list[Path], method: str, n_segments: int, resize_shorter: int | None, **op_args: int):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=len(files), num_threads=2, device_id=None, seed=0)
    def pipe():
        jpegs, _ = fn.readers.file(files=[str(f) for f in files])
        images = fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)
        if resize_shorter:
            images = fn.resize(images, resize_shorter=resize_shorter)
        graph = dali_plugin.superpixel_graph(images, method=method, n_segments=n_segments, **op_args)
        return (images, *graph)

    pipeline = pipe()
    pipeline.build()
    images, *graph = pipeline.run()
    return [np.array(images[i]) for i in range(len(files))], [
        [np.array(out[i]) for out in graph] for i in range(len(files))
    ]


def assert_same_as_module(images, dali_graphs, method: str, n_segments: int, **op_args: int) -> None:
    for image, outputs in zip(images, dali_graphs, strict=True):
        if method == "slic":
            expected = sp.slic_graph(image, n_segments, **op_args)
        else:
            expected = sp.grid_graph(image, n_segments)
        for name, got in zip(OUTPUTS, outputs, strict=True):
            np.testing.assert_array_equal(got, getattr(expected, name), err_msg=name)


@pytest.mark.parametrize("method", ["slic", "grid"])
def test_operator_equals_module_on_real_jpegs(method: str) -> None:
    images, graphs = run_pipeline(library_jpegs(), method, n_segments=196, resize_shorter=224)
    assert len({im.shape for im in images}) > 1, "want images of varying size in one batch"
    assert_same_as_module(images, graphs, method, 196)


def test_operator_passes_slic_arguments() -> None:
    args = {"subsample_stride": 3, "max_iter": 5}
    images, graphs = run_pipeline(library_jpegs()[:3], "slic", 100, 160, **args)
    assert_same_as_module(images, graphs, "slic", 100, **args)


def test_operator_equals_module_on_pillow_jpegs(pillow_images: Path) -> None:
    from PIL import Image

    files = []
    for path in sorted(pillow_images.glob("*.jpg")):
        try:
            with Image.open(path) as im:
                im.load()
                if min(im.size) >= 32 and im.mode in ("RGB", "L", "CMYK"):
                    files.append(path)
        except (OSError, SyntaxError):
            continue
    assert len(files) >= 10
    images, graphs = run_pipeline(files[:24], "slic", n_segments=64, resize_shorter=None)
    assert_same_as_module(images, graphs, "slic", 64)


def test_operator_error_names_the_file(tmp_path: Path) -> None:
    from PIL import Image

    tiny = tmp_path / "tiny.jpg"
    Image.new("RGB", (6, 6), (200, 10, 10)).save(tiny)
    with pytest.raises(ValueError, match=r"tiny\.jpg.*smaller than the 14x14 segment grid") as info:
        run_pipeline([tiny], "slic", n_segments=196, resize_shorter=None)
    assert "Stacktrace" not in str(info.value)


def test_plugin_version_is_pinned() -> None:
    import nvidia.dali

    from vigsp import _native

    assert nvidia.dali.__version__ == _native.DALI_BUILD_VERSION
    assert dali_plugin.plugin_path().is_file()
