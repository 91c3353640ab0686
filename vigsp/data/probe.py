"""Is one image file fit for training? Pillow says what is wrong; DALI's decoder says whether it breaks.

The verdict that matters is DALI's: it is the decoder training uses, and it rejects some files that
Pillow reads (junk before a marker, broken APP segments) and accepts some that Pillow calls
damaged. Pillow supplies the details: format, mode, size and the kind of damage.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image, UnidentifiedImageError

Severity = Literal["error", "warning"]

# kind -> (severity, what to do). Errors stop a training run; warnings are worth a look.
KINDS: dict[str, tuple[Severity, str]] = {
    "unreadable": ("error", "check the file's permissions and storage, or skip it with data.exclude_list"),
    "not_an_image": (
        "error",
        "it is not an image: move it out of the dataset, or skip it with data.exclude_list",
    ),
    "truncated": (
        "error",
        "the file ends early (an interrupted download or copy): fetch it again, or skip it",
    ),
    "corrupt": ("error", "the image data is damaged: fetch it again, or skip it with data.exclude_list"),
    "undecodable": (
        "error",
        "Pillow reads it but DALI's decoder rejects it: re-encode it as a plain RGB JPEG "
        "(Image.open(f).convert('RGB').save(f, quality=95)), or skip it with data.exclude_list",
    ),
    "damaged": (
        "warning",
        "DALI decodes it but part of the pixels may be garbage: fetch it again if you can",
    ),
    "not_jpeg": (
        "warning",
        "named .jpg but stored in another format; DALI goes by the content, other tools may not",
    ),
    "cmyk": (
        "warning",
        "a CMYK JPEG: decoded to RGB without its colour profile, colours may be off; convert it",
    ),
    "greyscale": (
        "warning",
        "greyscale: it is fed as three equal channels; fine if intended (e.g. Fashion-MNIST)",
    ),
    "tiny": (
        "warning",
        "it will be upsampled to data.image_size; make sure it is not a thumbnail or placeholder",
    ),
}

_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_JPEG_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif"})


@dataclass(frozen=True)
class Issue:
    path: str
    kind: str
    detail: str

    @property
    def severity(self) -> Severity:
        return KINDS[self.kind][0]

    @property
    def advice(self) -> str:
        return KINDS[self.kind][1]


@dataclass(frozen=True)
class _PillowView:
    format: str | None = None
    mode: str | None = None
    size: tuple[int, int] | None = None
    failure: str | None = None  # kind, when Pillow could not read it all
    message: str = ""


def _pillow_view(data: bytes) -> _PillowView:
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return _PillowView(failure="not_an_image", message="no image format recognised")
    except Exception as err:  # Pillow raises many types for broken headers
        return _PillowView(failure="corrupt", message=f"{type(err).__name__}: {err}")
    with image:
        view = {"format": image.format, "mode": image.mode, "size": image.size}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image.load()
        except OSError as err:
            kind = "truncated" if "truncated" in str(err) else "corrupt"
            return _PillowView(**view, failure=kind, message=str(err))
        except Exception as err:
            return _PillowView(**view, failure="corrupt", message=f"{type(err).__name__}: {err}")
    return _PillowView(**view)


class DaliDecodeProbe:
    """Decodes one encoded image at a time with DALI's CPU decoder, as the training pipelines do."""

    def __init__(self) -> None:
        self._pipe = None

    def _build(self):
        from nvidia.dali import fn, pipeline_def, types

        @pipeline_def(batch_size=1, num_threads=1, device_id=None, exec_async=False, exec_pipelined=False)
        def decode_one():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)

        pipe = decode_one()
        pipe.build()
        return pipe

    def error(self, data: bytes) -> str | None:
        """None if DALI decodes ``data``, else the first line of its complaint."""
        import numpy as np

        if self._pipe is None:
            self._pipe = self._build()
        try:
            self._pipe.feed_input("encoded", [np.frombuffer(data, dtype=np.uint8)])
            self._pipe.run()
        except Exception as err:
            self._pipe = None  # a failed DALI pipeline cannot run again
            return dali_error_summary(str(err))
        return None


def dali_error_summary(message: str) -> str:
    """The informative line of a DALI error (it wraps the cause in tracebacks and boilerplate)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if "encountered:" in lines:
        after = lines[lines.index("encountered:") + 1 :]
        useful = [line for line in after if not line.startswith("Current pipeline object")]
        if useful:
            return useful[0].rstrip(" :")
    return lines[0] if lines else "unknown DALI error"


def probe_file(path: str | Path, min_size: int = 16, dali: DaliDecodeProbe | None = None) -> list[Issue]:
    """The issues of one file; empty when it is a healthy image. ``dali=None`` trusts Pillow alone."""
    path = str(path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        return [Issue(path, "unreadable", err.strerror or str(err))]
    if not data:
        return [Issue(path, "not_an_image", "the file is empty")]

    view = _pillow_view(data)
    dali_error = dali.error(data) if dali is not None else None
    if view.failure is not None:
        if dali is not None and dali_error is None:
            return [Issue(path, "damaged", f"Pillow: {view.message}")]
        detail = view.message + (f"; DALI: {dali_error}" if dali_error else "")
        return [Issue(path, view.failure, detail)]
    if dali_error is not None:
        return [Issue(path, "undecodable", f"DALI: {dali_error} ({view.format} {view.mode} {view.size})")]

    issues = []
    if os.path.splitext(path)[1].lower() in _JPEG_SUFFIXES and view.format != "JPEG":
        issues.append(Issue(path, "not_jpeg", f"the content is {view.format}"))
    if view.mode == "CMYK":
        issues.append(Issue(path, "cmyk", f"{view.format} in CMYK"))
    elif view.mode in _GREY_MODES:
        issues.append(Issue(path, "greyscale", f"mode {view.mode}"))
    width, height = view.size or (0, 0)
    if min(width, height) < min_size:
        issues.append(Issue(path, "tiny", f"{width}x{height} pixels, under {min_size}"))
    return issues
