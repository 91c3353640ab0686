"""``vigsp data check PATH``: decode every image, in parallel, and report what would break training.

Each worker process decodes with Pillow (for the details) and with DALI's CPU decoder (for the
verdict, see probe.py). DALI's C++ code prints its own complaints to stderr; the workers send
those to /dev/null so that the report and the progress bar stay readable.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from vigsp.data.folders import is_image_file
from vigsp.data.probe import KINDS, DaliDecodeProbe, Issue, probe_file
from vigsp.errors import UserError

_probe: DaliDecodeProbe | None = None
_min_size = 16


def _init_worker(use_dali: bool, min_size: int) -> None:
    global _probe, _min_size
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # native decoders write to fd 2 directly
    _probe = DaliDecodeProbe() if use_dali else None
    _min_size = min_size


def _check_one(path: str) -> list[Issue]:
    return probe_file(path, _min_size, _probe)


@dataclass(frozen=True)
class CheckResult:
    root: Path
    checked: int
    skipped: int  # files that are not images by their extension
    issues: list[Issue]

    @property
    def errors(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [issue for issue in self.issues if issue.severity == "warning"]


def find_images(path: Path) -> tuple[list[str], int]:
    """Image files under ``path`` (or ``path`` itself), sorted, and how many other files were skipped."""
    if path.is_file():
        return [str(path)], 0
    if not path.is_dir():
        raise UserError(f"{path} does not exist; give a dataset folder or an image file")
    images, skipped = [], 0
    for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if is_image_file(name):
                images.append(os.path.join(dirpath, name))
            elif not name.startswith("."):
                skipped += 1
    return sorted(images), skipped


def check_images(
    path: Path, min_size: int = 16, workers: int | None = None, use_dali: bool = True, progress: bool = True
) -> CheckResult:
    images, skipped = find_images(path)
    if not images:
        raise UserError(f"{path} holds no image files ({', '.join(sorted({'.jpg', '.png', '.webp'}))}, ...)")
    workers = max(1, min(workers or os.cpu_count() or 1, len(images)))
    issues: list[Issue] = []
    # spawn: DALI's threads do not survive fork, and the parent may have started them.
    context = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(
            workers, mp_context=context, initializer=_init_worker, initargs=(use_dali, min_size)
        ) as pool,
        tqdm(total=len(images), unit="img", desc=f"checking {path}", disable=not progress) as bar,
    ):
        chunk = max(1, min(64, len(images) // (workers * 8)))
        for found in pool.map(_check_one, images, chunksize=chunk):
            issues.extend(found)
            bar.update()
    return CheckResult(path, len(images), skipped, issues)


def _shown(path: str, root: Path) -> str:
    if root.is_dir():
        return os.path.relpath(path, root)
    return path


def format_report(result: CheckResult, max_per_kind: int | None = None) -> str:
    """One line per problem file (errors first), then a count per kind with what to do."""
    lines = []
    order = sorted(result.issues, key=lambda i: (i.severity != "error", i.kind, i.path))
    shown_per_kind: Counter[str] = Counter()
    for issue in order:
        shown_per_kind[issue.kind] += 1
        if max_per_kind is None or shown_per_kind[issue.kind] <= max_per_kind:
            lines.append(
                f"{issue.severity:<8} {issue.kind:<13} {_shown(issue.path, result.root)}: {issue.detail}"
            )
    counts = Counter(issue.kind for issue in result.issues)
    lines.append("")
    lines.append(
        f"checked {result.checked} image(s) in {result.root}"
        + (f" ({result.skipped} non-image file(s) ignored)" if result.skipped else "")
        + f": {len(result.errors)} would stop training, {len(result.warnings)} warning(s)"
    )
    for kind, (severity, advice) in KINDS.items():
        if counts[kind]:
            hidden = counts[kind] - min(counts[kind], max_per_kind or counts[kind])
            more = f", {hidden} not listed above" if hidden else ""
            lines.append(f"  {kind} ({severity}, {counts[kind]} file(s){more}): {advice}")
    return "\n".join(lines)


def write_exclude_list(issues: Sequence[Issue], destination: Path) -> int:
    """Writes the absolute paths of the files with errors, for data.exclude_list; returns how many."""
    paths = sorted({os.path.abspath(issue.path) for issue in issues if issue.severity == "error"})
    destination.write_text("".join(f"{p}\n" for p in paths))
    return len(paths)
