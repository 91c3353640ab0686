"""Shared pytest setup. Fixtures that start real services live in tests/fixtures/."""

import os

# DeepSpeed must never try CUDA or MPI discovery on the CPU test machine.
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from tests.fixtures.images import pillow_images  # noqa: F401  (fixture)
