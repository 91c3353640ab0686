"""The CUDA backend: built whenever nvcc is, safe without a GPU, and equal to the CPU core on one.

GPU tests compare against the CPU core in the same process: SLIC labels within
``LABEL_TOLERANCE`` (designed to be 0), and graph parts of one label map exactly equal.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.fixtures.images import library_jpegs
from vigsp import _native
from vigsp import superpixels as sp
from vigsp.superpixels import gpu as spg

NO_GPU_REASON = "no CUDA device: vigsp._native.cuda_device_count() == 0" + (
    "" if _native.cuda_built else " (and vigsp was built without the CUDA backend)"
)


def needs_gpu(test):
    """Marks a test `gpu` and skips it, saying why, where no CUDA device is available."""
    return pytest.mark.gpu(pytest.mark.skipif(spg.cuda_device_count() == 0, reason=NO_GPU_REASON)(test))


def nvcc_on_this_machine() -> bool:
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidates = [os.environ.get("CUDACXX"), shutil.which("nvcc")]
    if cuda_home:
        candidates.append(str(Path(cuda_home) / "bin" / "nvcc"))
    return any(c and Path(c).exists() for c in candidates)


def has_gpu_device_node() -> bool:
    return Path("/dev/nvidiactl").exists() or Path("/dev/nvidia0").exists()


# --- without a GPU ------------------------------------------------------------------------------


@pytest.mark.skipif(
    not nvcc_on_this_machine(), reason="nvcc not found here, so the CPU-only build is expected"
)
def test_cuda_backend_compiled_when_nvcc_is_present() -> None:
    assert _native.cuda_built, "nvcc is on this machine but vigsp._native was built without the CUDA backend"
    assert spg.CUDA_BUILT


def test_device_count_never_crashes() -> None:
    count = spg.cuda_device_count()
    assert isinstance(count, int) and count >= 0
    if not has_gpu_device_node():
        assert count == 0


@pytest.mark.skipif(spg.cuda_device_count() > 0, reason="a CUDA device is present")
@pytest.mark.parametrize("entry", ["slic", "grid", "labels"])
def test_entry_points_raise_clear_error_without_gpu(entry: str) -> None:
    images = np.zeros((2, 32, 32, 3), np.uint8)
    with pytest.raises(RuntimeError, match="no CUDA device is available"):
        if entry == "slic":
            spg.slic_graph_batch_cuda(images, n_segments=16)
        elif entry == "grid":
            spg.grid_graph_batch_cuda(images, n_segments=16)
        else:
            spg.graph_from_labels_cuda(images, np.zeros((2, 32, 32), np.int32))
    assert not spg.cuda_available()


@pytest.mark.dali
def test_dali_plugin_loads_with_gpu_variant_and_cpu_op_still_runs() -> None:
    from nvidia.dali import fn, pipeline_def
    from nvidia.dali.ops import _registry

    from vigsp.superpixels import dali as dali_plugin

    dali_plugin.load()
    assert "vigsp__SuperpixelGraph" in _registry._cpu_ops
    if _native.cuda_built:
        assert "vigsp__SuperpixelGraph" in _registry._gpu_ops
    image = smooth_random_image(np.random.default_rng(3), 48, 64)

    @pipeline_def(batch_size=2, num_threads=2, device_id=None)
    def pipe():
        x = fn.external_source(source=lambda: [image, image[:40]], batch=True, layout="HWC")
        return tuple(dali_plugin.superpixel_graph(x, n_segments=24))

    pipeline = pipe()
    pipeline.build()
    outputs = pipeline.run()
    expected = sp.slic_graph(image, 24)
    np.testing.assert_array_equal(np.array(outputs[0][0]), expected.labels)


# --- on a GPU -----------------------------------------------------------------------------------


def smooth_random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Blobs of colour with noise: SLIC has real edges to follow, unlike pure noise."""
    coarse = rng.random((height // 8 + 2, width // 8 + 2, 3))
    up = np.kron(coarse, np.ones((8, 8, 1)))[:height, :width]
    noisy = up * 200 + rng.normal(0, 12, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def crop_224(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    pil = Image.fromarray(image)
    scale = 224 / min(pil.size)
    pil = pil.resize((max(224, round(pil.size[0] * scale)), max(224, round(pil.size[1] * scale))))
    arr = np.asarray(pil.convert("RGB"))
    y0, x0 = (arr.shape[0] - 224) // 2, (arr.shape[1] - 224) // 2
    return np.ascontiguousarray(arr[y0 : y0 + 224, x0 : x0 + 224])


def real_images() -> list[np.ndarray]:
    import skimage.data
    from PIL import Image

    images = [crop_224(skimage.data.astronaut()), crop_224(skimage.data.rocket())]
    images += [crop_224(np.asarray(Image.open(f).convert("RGB"))) for f in library_jpegs()]
    return images


def random_images(count: int, height: int = 224, width: int = 224) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    images = [smooth_random_image(rng, height, width) for _ in range(count - 1)]
    images.append(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))  # pure noise: many tiny fragments
    return images


def device(array: np.ndarray):
    return _native.DeviceBuffer.from_numpy(np.ascontiguousarray(array))


def assert_graph_equal(got: sp.SuperpixelGraph, expected: sp.SuperpixelGraph, where: str) -> None:
    for name in ("labels", "pixel_mask", "rag_edges", "features"):
        np.testing.assert_array_equal(getattr(got, name), getattr(expected, name), err_msg=f"{where}: {name}")


@needs_gpu
@pytest.mark.parametrize("source", ["real", "random"])
@pytest.mark.parametrize("subsample_stride", [1, 3])
def test_slic_matches_cpu(source: str, subsample_stride: int) -> None:
    images = real_images() if source == "real" else random_images(6)
    batch = np.stack(images)
    cpu = sp.slic_graph_batch(batch, n_segments=196, subsample_stride=subsample_stride)
    gpu = spg.slic_graph_batch_cuda(
        device(batch), n_segments=196, subsample_stride=subsample_stride
    ).to_host()
    shares = []
    for i, (g, c) in enumerate(zip(gpu, cpu, strict=True)):
        share = float(np.mean(g.labels != c.labels))
        shares.append(share)
        assert share <= spg.LABEL_TOLERANCE, f"image {i}: {share:.4%} of pixels differ"
        if share == 0:  # the same labels: the whole graph must be the same
            assert_graph_equal(g, c, f"image {i}")
        else:  # still a valid, compact SLIC map
            assert g.labels.max() + 1 == g.num_nodes
    print(f"label disagreement per image: {[f'{s:.4%}' for s in shares]}")


@needs_gpu
def test_graph_from_labels_is_exact() -> None:
    images = np.stack(real_images()[:4] + random_images(3))
    labels = np.stack([sp.slic_labels(im, 196) for im in images])
    # A grid map too, and a map with many labels (SLIC at 1000 segments).
    labels[1] = sp.grid_graph(images[1], 64).labels
    labels[0] = sp.slic_labels(images[0], 1000)
    got = spg.graph_from_labels_cuda(device(images), device(labels)).to_host()
    for i, g in enumerate(got):
        assert_graph_equal(g, sp.graph_from_labels(images[i], labels[i]), f"image {i}")


@needs_gpu
def test_grid_matches_cpu() -> None:
    images = np.stack(random_images(3, 100, 150))
    got = spg.grid_graph_batch_cuda(device(images), n_segments=50).to_host()
    for i, g in enumerate(got):
        assert_graph_equal(g, sp.grid_graph(images[i], 50), f"image {i}")


@needs_gpu
def test_odd_sizes_and_parameters() -> None:
    images = np.stack(random_images(2, 37, 91))
    for args in (
        {"n_segments": 5},
        {"n_segments": 60, "compactness": 1.0, "max_iter": 3, "min_size_factor": 0.0},
    ):
        cpu = sp.slic_graph_batch(images, **args)
        gpu = spg.slic_graph_batch_cuda(device(images), **args).to_host()
        for g, c in zip(gpu, cpu, strict=True):
            assert float(np.mean(g.labels != c.labels)) <= spg.LABEL_TOLERANCE, args


@needs_gpu
def test_bad_input_raises_value_error() -> None:
    images = np.stack(random_images(2, 32, 32))
    holes = np.zeros((2, 32, 32), np.int32)
    holes[:, :, 16:] = 2  # label 1 missing
    with pytest.raises(ValueError, match="compact"):
        spg.graph_from_labels_cuda(device(images), device(holes))
    with pytest.raises(ValueError, match="uint8"):
        spg.slic_graph_batch_cuda(device(images.astype(np.float32)))
    with pytest.raises(ValueError, match="smaller than"):
        spg.slic_graph_batch_cuda(device(images), n_segments=5000)
    with pytest.raises(ValueError, match="device array"):
        spg.slic_graph_batch_cuda(images)


@needs_gpu
def test_torch_tensors_in_and_out() -> None:
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    images = np.stack(random_images(2, 64, 64))
    result = spg.slic_graph_batch_cuda(torch.from_numpy(images).cuda(), n_segments=30)
    assert isinstance(result.labels, torch.Tensor) and result.labels.is_cuda
    for g, c in zip(result.to_host(), sp.slic_graph_batch(images, 30), strict=True):
        assert float(np.mean(g.labels != c.labels)) <= spg.LABEL_TOLERANCE


@needs_gpu
@pytest.mark.dali
def test_dali_gpu_operator_equals_cpu_core() -> None:
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    from vigsp.superpixels import dali as dali_plugin

    images = [*real_images()[:3], random_images(2, 57, 83)[0]]

    @pipeline_def(batch_size=len(images), num_threads=2, device_id=0)
    def pipe():
        x = fn.external_source(source=lambda: images, batch=True, layout="HWC")
        return tuple(dali_plugin.superpixel_graph(x.gpu(), n_segments=196))

    pipeline = pipe()
    pipeline.build()
    outputs = [o.as_cpu() for o in pipeline.run()]
    for i, image in enumerate(images):
        expected = sp.slic_graph(image, 196)
        labels = np.array(outputs[0][i])
        share = float(np.mean(labels != expected.labels))
        assert share <= spg.LABEL_TOLERANCE, f"image {i}: {share:.4%}"
        if share == 0:
            got = sp.SuperpixelGraph(labels, *(np.array(outputs[k][i]) for k in (1, 2, 3)))
            assert_graph_equal(got, expected, f"image {i}")
