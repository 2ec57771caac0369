"""The watcher that stops a run's processes when the wrapper is killed, and records the interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from simulations.parent_watch import INTERRUPTED_FILE, release_parent_watch, start_parent_watch
from simulations.processes import alive

ROOT = Path(__file__).resolve().parents[1]


def _wait_for(condition, limit: float = 30.0) -> bool:
    """Poll ``condition`` until it holds or ``limit`` seconds passed; return whether it held."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def _federation(home: Path) -> subprocess.Popen:
    """A stand-in for a run's Flower processes: a sleep marked with the run's FLWR_HOME."""
    return subprocess.Popen(["sleep", "120"], env={**os.environ, "FLWR_HOME": str(home)}, start_new_session=True)


def test_a_killed_wrapper_has_its_run_stopped_and_the_run_folder_says_so(tmp_path):
    # Prepare: a wrapper stand-in that starts a marked process and the watcher, then waits
    home, folder = tmp_path / "flwr-home", tmp_path / "run"
    code = (
        "import os, subprocess, sys, time\n"
        "from pathlib import Path\n"
        "from simulations.parent_watch import start_parent_watch\n"
        f"home, folder = Path({str(home)!r}), Path({str(folder)!r})\n"
        "run = subprocess.Popen(['sleep', '120'], env={**os.environ, 'FLWR_HOME': str(home)}, start_new_session=True)\n"
        "start_parent_watch(home, '1', folder)\n"
        "print(run.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    wrapper = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert wrapper.stdout is not None
    run_pid = int(wrapper.stdout.readline())

    # Execute: SIGKILL gives the wrapper no chance to stop anything
    wrapper.send_signal(signal.SIGKILL)
    wrapper.wait()
    wrapper.stdout.close()

    # Assert: the marked process is stopped and the interruption is recorded
    marker = folder / INTERRUPTED_FILE
    assert _wait_for(lambda: not alive(run_pid) and marker.exists())
    record = json.loads(marker.read_text())
    assert record["interrupted"] is True
    assert "killed" in record["reason"]


def test_a_released_watcher_ends_and_touches_nothing(tmp_path):
    # Prepare
    home, folder = tmp_path / "flwr-home", tmp_path / "run"
    federation = _federation(home)
    watcher = start_parent_watch(home, "1", folder)

    # Execute
    release_parent_watch(watcher)

    # Assert: the wrapper had cleaned up itself, so the watcher left everything as it was
    assert watcher.returncode == 0
    assert alive(federation.pid)
    assert not (folder / INTERRUPTED_FILE).exists()
    federation.kill()
    federation.wait()
