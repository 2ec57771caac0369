"""Shared test fixtures; the helpers tests share are public, in ``simulations.testing``."""

from __future__ import annotations

import pytest

from simulations.flower_internals import set_task_identity


@pytest.fixture(autouse=True)
def _task_identity():
    """Strategies build messages, which read the run id of the current task."""
    set_task_identity(run_id=1)
    yield
