"""Tags that say what produced a run: the vigsp git commit, package versions, host and job."""

from __future__ import annotations

import contextlib
import getpass
import importlib.metadata as md
import os
import platform
import socket
import subprocess
from pathlib import Path

from vigsp.tracking.names import TAG_GIT_COMMIT, TAG_GIT_DIRTY, TAG_USER

# Version tags read from package metadata: cheap, and nothing gets imported.
PACKAGES = {"torch.version": "torch", "deepspeed.version": "deepspeed", "mlflow.version": "mlflow"}
SLURM_ENV = {"slurm.job_id": "SLURM_JOB_ID", "slurm.array_task_id": "SLURM_ARRAY_TASK_ID"}


def _dist_version(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def _dali_version() -> str | None:
    # DALI ships as nvidia-dali-cuda120, -cuda130, ...: take whichever is installed.
    for dist in md.distributions():
        name = dist.metadata["Name"] or ""
        if name.lower().startswith("nvidia-dali"):
            return f"{dist.version} ({name})"
    return None


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip()


def git_tags(source_dir: Path | None = None) -> dict[str, str]:
    """Commit of the vigsp source tree (not of the cwd); nothing when it is not a git checkout."""
    src = source_dir or Path(__file__).resolve().parents[2]
    commit = _git(["rev-parse", "HEAD"], src)
    if not commit:
        return {}
    status = _git(["status", "--porcelain", "--untracked-files=no"], src)
    return {TAG_GIT_COMMIT: commit, TAG_GIT_DIRTY: "true" if status else "false"}


def provenance_tags() -> dict[str, str]:
    from vigsp import __version__

    tags = {"vigsp.version": __version__, "python.version": platform.python_version()}
    for tag, dist in PACKAGES.items():
        if version := _dist_version(dist):
            tags[tag] = version
    if dali := _dali_version():
        tags["dali.version"] = dali
    tags.update(git_tags())
    tags["host"] = socket.gethostname()
    with contextlib.suppress(KeyError, OSError):  # no passwd entry in some containers
        tags[TAG_USER] = getpass.getuser()
    for tag, var in SLURM_ENV.items():
        if var in os.environ:
            tags[tag] = os.environ[var]
    return tags
