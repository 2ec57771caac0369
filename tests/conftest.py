"""Shared test fixtures; the helpers tests share are public, in ``simulations.testing``."""

from __future__ import annotations

import os

import pytest

from simulations.flower_internals import set_task_identity


def pytest_configure(config: pytest.Config) -> None:
    """Give each pytest-xdist worker, and what it starts, one torch thread.

    Two workers on two cores with a thread per core each make OpenMP threads wait on
    one another (runs 5-8x slower); the apps a test starts inherit the variable.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("MKL_NUM_THREADS", "1")
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _task_identity():
    """Strategies build messages, which read the run id of the current task."""
    set_task_identity(run_id=1)
    yield
