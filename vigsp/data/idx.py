"""Reading MNIST-style idx files (optionally gzipped), with header checks that name the file.

Format (big-endian): two zero bytes, a type byte (0x08 = uint8), a dimension count, one uint32
per dimension, then the data. Only uint8 is used by (Fashion-)MNIST, so only uint8 is accepted.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from vigsp.errors import UserError

UINT8 = 0x08


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from err
    if raw[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise UserError(
                f"{path} is a damaged gzip file ({err}); download or reinstall it "
                "(apt-get install --reinstall dataset-fashion-mnist)"
            ) from err
    return raw


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The array stored in ``path``, which must be a uint8 idx file with ``ndim`` dimensions."""
    data = _read_bytes(path)
    if len(data) < 4:
        raise UserError(f"{path} is too short ({len(data)} bytes) to be an idx file")
    zero, dtype, file_ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != UINT8 or file_ndim != ndim:
        raise UserError(
            f"{path} has idx magic 0x{data[:4].hex()}, expected 0x00000{UINT8:x}0{ndim} "
            f"(uint8, {ndim} dimension{'s' if ndim > 1 else ''}); is it the right file?"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path} ends inside its idx header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise UserError(
            f"{path} holds {len(data)} bytes but its header {tuple(shape)} needs {expected}: "
            "the file is truncated or damaged; download or reinstall it"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_images_and_labels(
    images_path: Path, labels_path: Path, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """A [N, H, W] uint8 image array and its [N] labels, checked against each other."""
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise UserError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels; "
            "the two files must come from the same split"
        )
    bad = np.flatnonzero(labels >= num_classes)
    if bad.size:
        raise UserError(
            f"{labels_path} has label {int(labels[bad[0]])} at index {int(bad[0])} "
            f"({bad.size} such labels); labels must be in 0..{num_classes - 1}"
        )
    return images, labels
