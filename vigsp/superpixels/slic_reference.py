"""Plain NumPy SLIC with the C++ core's exact arithmetic, for tests.

The classic cluster-by-cluster loop of Achanta et al. as the core specifies it (csrc/src/slic.cpp):
the float32 Lab planes, windows of one grid step around each centre, distances evaluated in the
same float32 order without FMA, ties to the lower cluster, double-precision centre sums, the
subsampled sweeps, and connectivity enforcement in raster order. None of the core's speed-ups
(row sweeps, chunking, incremental sums, run-based union-find) is here, so when the two agree bit
for bit the speed-ups changed nothing. Slow (a Python loop per cluster): use small images.
"""

from __future__ import annotations

import math

import numpy as np

_F = np.float32
_WHITE_X, _WHITE_Z = 0.95047, 1.08883
_EPSILON, _KAPPA_SLOPE = 0.008856, 7.787


def _linear_table() -> np.ndarray:
    c = np.arange(256, dtype=np.float64) / 255.0
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(_F)


def _fast_cbrt(t: np.ndarray) -> np.ndarray:
    """The core's cube root: exponent / 3 from the bits, then three Newton steps, all in float32."""
    bits = t.view(np.int32).astype(_F)
    guess = (bits * (_F(1) / _F(3))).astype(np.int32) + np.int32(709921077)
    y = guess.view(_F)
    for _ in range(3):
        y = (_F(2) * y + t / (y * y)) * (_F(1) / _F(3))
    return y


def _lab_f(t: np.ndarray) -> np.ndarray:
    linear = _F(_KAPPA_SLOPE) * t + _F(16) / _F(116)
    above = t > _F(_EPSILON)
    return np.where(above, _fast_cbrt(np.where(above, t, _F(1))), linear)


def lab_planes(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float32 L, a, b planes exactly as the core computes them."""
    table = _linear_table()
    r, g, b = (table[image[..., i]] for i in range(3))
    inv_wx, inv_wz = _F(1.0 / _WHITE_X), _F(1.0 / _WHITE_Z)
    fx = _lab_f((_F(0.412453) * r + _F(0.357580) * g + _F(0.180423) * b) * inv_wx)
    fy = _lab_f(_F(0.212671) * r + _F(0.715160) * g + _F(0.072169) * b)
    fz = _lab_f((_F(0.019334) * r + _F(0.119193) * g + _F(0.950227) * b) * inv_wz)
    return _F(116) * fy - _F(16), _F(500) * (fx - fy), _F(200) * (fy - fz)


def _round_half_away(x: float) -> int:
    return math.floor(abs(x) + 0.5) * (1 if x >= 0 else -1)


def grid_shape(height: int, width: int, n_segments: int) -> tuple[int, int]:
    rows = max(1, _round_half_away(math.sqrt(n_segments * height / width)))
    return rows, max(1, _round_half_away(n_segments / rows))


def _windows(centers: np.ndarray, height: int, width: int, step_y: np.float32, step_x: np.float32) -> list:
    windows = []
    for cy, cx in centers[:, 3:5]:
        if not np.isfinite(cy):  # an emptied cluster covers nothing
            windows.append((0, 0, 0, 0))
            continue
        y0 = max(0, int(np.floor(cy - step_y)))
        y1 = max(y0, min(height, int(np.ceil(cy + step_y)) + 1))
        x0 = max(0, int(np.floor(cx - step_x)))
        x1 = max(x0, min(width, int(np.ceil(cx + step_x)) + 1))
        windows.append((y0, y0 if x0 == x1 else y1, x0, x1))
    return windows


def _assign(planes, centers, assignment, rows, weight, step_y, step_x) -> int:
    """One k-means assignment of the pixels in `rows` (a boolean row mask); returns how many moved."""
    height, width = assignment.shape
    dist = np.full((height, width), np.inf, dtype=_F)
    best = assignment.copy()
    for k, (window, center) in enumerate(
        zip(_windows(centers, height, width, step_y, step_x), centers, strict=True)
    ):
        y0, y1, x0, x1 = window
        ys = np.arange(y0, y1)[rows[y0:y1]]
        if ys.size == 0 or x1 <= x0:
            continue
        cl, ca, cb, cy, cx = center
        dy = ys.astype(_F) - cy
        dx = np.arange(x0, x1).astype(_F) - cx
        dy2 = (weight * dy * dy)[:, None]
        dx2 = (weight * dx * dx)[None, :]
        dl = planes[0][ys, x0:x1] - cl
        da = planes[1][ys, x0:x1] - ca
        db = planes[2][ys, x0:x1] - cb
        d = dl * dl + da * da + db * db + dy2 + dx2
        closer = d < dist[ys, x0:x1]  # strict: the lower cluster keeps a tie
        block_dist, block_best = dist[ys, x0:x1], best[ys, x0:x1]
        block_dist[closer] = d[closer]
        block_best[closer] = k
        dist[ys, x0:x1], best[ys, x0:x1] = block_dist, block_best
    moved = int(np.count_nonzero(best != assignment))
    assignment[...] = best
    return moved


def _move_centers(planes, assignment: np.ndarray, centers: np.ndarray) -> None:
    # Lab values are multiples of 2^-24, so these float64 sums are exact in any order.
    width = assignment.shape[1]
    flat = assignment.ravel()
    valid = flat >= 0
    ys, xs = np.divmod(np.arange(flat.size)[valid], width)
    k = len(centers)
    counts = np.bincount(flat[valid], minlength=k).astype(np.float64)
    values = [p.ravel()[valid].astype(np.float64) for p in planes] + [
        ys.astype(np.float64),
        xs.astype(np.float64),
    ]
    for j, v in enumerate(values):
        sums = np.bincount(flat[valid], weights=v, minlength=k)
        nonempty = counts > 0
        centers[nonempty, j] = (sums[nonempty] / counts[nonempty]).astype(_F)
    centers[counts == 0, 3] = np.nan


def enforce_connectivity(assignment: np.ndarray, min_size: int) -> np.ndarray:
    """4-connected components numbered in raster order of their first pixel; one smaller than
    min_size takes the final label of the pixel left of its first pixel (column 0: above)."""
    from scipy import ndimage

    height, width = assignment.shape
    components = np.zeros((height, width), dtype=np.int64)
    count = 0
    for value in np.unique(assignment):
        parts, n = ndimage.label(assignment == value)  # default structure: 4-connectivity
        components[parts > 0] = parts[parts > 0] + count
        count += n
    flat = components.ravel() - 1
    first = np.full(count, flat.size, dtype=np.int64)
    np.minimum.at(first, flat, np.arange(flat.size))
    sizes = np.bincount(flat, minlength=count)
    final = np.empty(count, dtype=np.int64)
    next_label = 0
    for c in np.argsort(first):
        y, x = divmod(int(first[c]), width)
        neighbour = flat[first[c] - 1] if x > 0 else (flat[(y - 1) * width] if y > 0 else -1)
        if sizes[c] < min_size and neighbour >= 0:
            final[c] = final[neighbour]
        else:
            final[c] = next_label
            next_label += 1
    return final[flat].reshape(height, width).astype(np.int32)


def slic_reference(
    image: np.ndarray,
    n_segments: int = 196,
    compactness: float = 10.0,
    max_iter: int = 10,
    min_size_factor: float = 0.5,
    subsample_stride: int = 1,
) -> np.ndarray:
    """The label map vigsp.superpixels.slic_labels gives, computed the plain way."""
    height, width = image.shape[:2]
    rows, cols = grid_shape(height, width, n_segments)
    planes = lab_planes(image)
    centers = np.empty((rows * cols, 5), dtype=_F)
    for r in range(rows):
        for c in range(cols):
            cy = (_F(r) + _F(0.5)) * _F(height) / _F(rows) - _F(0.5)
            cx = (_F(c) + _F(0.5)) * _F(width) / _F(cols) - _F(0.5)
            py, px = _round_half_away(float(cy)), _round_half_away(float(cx))
            centers[r * cols + c] = [planes[0][py, px], planes[1][py, px], planes[2][py, px], cy, cx]
    step = math.sqrt(height * width / (rows * cols))
    ratio = float(_F(compactness)) / step
    weight = _F(ratio * ratio)
    step_y, step_x = _F(height) / _F(rows), _F(width) / _F(cols)
    assignment = np.full((height, width), -1, dtype=np.int64)
    stride = min(subsample_stride, height)
    for it in range(max_iter):
        sweep = np.arange(height) % stride == it % stride
        moved = _assign(planes, centers, assignment, sweep, weight, step_y, step_x)
        if moved == 0 and stride == 1:
            break
        _move_centers(planes, assignment, centers)
    if stride > 1:
        _assign(planes, centers, assignment, np.ones(height, dtype=bool), weight, step_y, step_x)
    min_size = int(float(_F(min_size_factor)) * (height * width) / (rows * cols))
    return enforce_connectivity(assignment, min_size)
