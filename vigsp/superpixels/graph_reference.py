"""Plain NumPy reference for each part of the superpixel graph.

Deliberately simple and independent of the C++ core: the tests compare the core against it
on random and real inputs. Not used on any hot path.
"""

from __future__ import annotations

import numpy as np

_WHITE_X, _WHITE_Z = 0.95047, 1.08883
_RGB_TO_XYZ = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)


def pixel_mask_reference(labels: np.ndarray) -> np.ndarray:
    """Bit 0: right neighbour has the same label; bit 1: the one below does."""
    mask = np.zeros(labels.shape, dtype=np.uint8)
    mask[:, :-1] |= (labels[:, :-1] == labels[:, 1:]).astype(np.uint8)
    mask[:-1, :] |= (labels[:-1, :] == labels[1:, :]).astype(np.uint8) << 1
    return mask


def pixel_edges_reference(labels: np.ndarray) -> np.ndarray:
    """4-neighbour pixel pairs with the same label as [M, 2] int64 flat indices, sorted."""
    height, width = labels.shape
    index = np.arange(height * width, dtype=np.int64).reshape(height, width)
    same_right = labels[:, :-1] == labels[:, 1:]
    same_down = labels[:-1, :] == labels[1:, :]
    right = np.stack([index[:, :-1][same_right], index[:, 1:][same_right]], axis=1)
    down = np.stack([index[:-1, :][same_down], index[1:, :][same_down]], axis=1)
    edges = np.concatenate([right, down])
    return edges[np.lexsort((edges[:, 1], edges[:, 0]))]


def rag_edges_reference(labels: np.ndarray) -> np.ndarray:
    """Unique undirected edges (i < j) between 4-adjacent labels, sorted, as [E, 2] int32."""
    pairs = [
        np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], axis=1),
        np.stack([labels[:-1, :].ravel(), labels[1:, :].ravel()], axis=1),
    ]
    pairs = np.concatenate(pairs)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = np.sort(pairs, axis=1)
    return np.unique(pairs, axis=0).astype(np.int32).reshape(-1, 2)


def srgb_to_lab_reference(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 255] (any shape [..., 3]) to CIELAB under D65, as in skimage.color.rgb2lab."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T
    xyz = xyz / np.array([_WHITE_X, 1.0, _WHITE_Z])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    return np.stack(
        [116.0 * f[..., 1] - 16.0, 500.0 * (f[..., 0] - f[..., 1]), 200.0 * (f[..., 1] - f[..., 2])], axis=-1
    )


def node_features_reference(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[N, 13] float32 features in the order of ``vigsp.superpixels.FEATURE_NAMES``."""
    height, width = labels.shape
    n = int(labels.max()) + 1
    flat = labels.ravel()
    ys, xs = np.indices(labels.shape)
    count = np.bincount(flat, minlength=n).astype(np.float64)
    mean_y = np.bincount(flat, weights=ys.ravel(), minlength=n) / count
    mean_x = np.bincount(flat, weights=xs.ravel(), minlength=n) / count
    y0 = np.full(n, height, dtype=np.int64)
    x0 = np.full(n, width, dtype=np.int64)
    y1 = np.full(n, -1, dtype=np.int64)
    x1 = np.full(n, -1, dtype=np.int64)
    np.minimum.at(y0, flat, ys.ravel())
    np.minimum.at(x0, flat, xs.ravel())
    np.maximum.at(y1, flat, ys.ravel())
    np.maximum.at(x1, flat, xs.ravel())
    rgb = image.reshape(-1, 3).astype(np.float64)
    mean_rgb = np.stack([np.bincount(flat, weights=rgb[:, c], minlength=n) for c in range(3)], axis=1)
    mean_rgb /= count[:, None]
    lab = srgb_to_lab_reference(mean_rgb)
    features = np.column_stack(
        [
            count,
            (mean_y + 0.5) / height,
            (mean_x + 0.5) / width,
            y0 / height,
            x0 / width,
            (y1 + 1) / height,
            (x1 + 1) / width,
            mean_rgb / 255.0,
            lab,
        ]
    )
    return features.astype(np.float32)


def is_each_label_connected(labels: np.ndarray) -> bool:
    """True when every label forms a single 4-connected region (scipy's component labelling)."""
    from scipy import ndimage

    for label in np.unique(labels):
        _, components = ndimage.label(labels == label)  # default structure: 4-connectivity
        if components != 1:
            return False
    return True
