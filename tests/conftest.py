"""Shared pytest setup. Fixtures that start real services live in tests/fixtures/."""

import os

# DeepSpeed must never try CUDA or MPI discovery on the CPU test machine.
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from tests.fixtures.images import pillow_images  # noqa: F401  (fixture)

# One Slurm cluster for the whole session, whichever module asks first. Defined here, not imported
# into each module: that would make one cluster per module, with job ids restarting at 1, and
# submitit's job-state cache (by job id, per process) would take a new job 1 for an old, ended one.
from tests.fixtures.slurm import slurm_cluster  # noqa: F401  (fixture)
