"""The runners' process helpers: finding a process tree, and stopping it by process id."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from simulations.processes import alive, descendants, spawned_by, stop_processes


def test_descendants_follow_parent_links_and_spawned_by_follows_parent_pid_flags():
    # Prepare: 10 started 11, which started 12; 20 names 10 as its parent by flag only
    table = {
        10: (1, ["flower-superlink"]),
        11: (10, ["child"]),
        12: (11, ["grandchild"]),
        20: (1, ["flower-superexec", "--parent-pid", "10"]),
        21: (20, ["simulation"]),
        30: (1, ["unrelated", "--parent-pid", "99"]),
    }

    # Execute
    detached = spawned_by({10}, table)
    tree = descendants({10} | detached, table)

    # Assert
    assert detached == {20}
    assert tree == {10, 11, 12, 20, 21}


def test_stop_processes_ends_a_tree_that_ignores_sigterm():
    # Prepare: a shell that ignores SIGTERM, with a child of its own
    shell = subprocess.Popen(["bash", "-c", "trap '' TERM; sleep 60 & wait"])
    deadline = time.monotonic() + 10
    while len(descendants([shell.pid])) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    tree = descendants([shell.pid])

    # Execute
    stopped = stop_processes(lambda: {p for p in descendants([shell.pid]) if alive(p)}, grace=1.0)

    # Assert: both signalled and gone; the shell was reaped, not left a zombie
    assert len(tree) == 2 and tree <= stopped
    assert not any(alive(p) for p in tree)
    assert not Path(f"/proc/{shell.pid}").exists()
    shell.wait(timeout=5)
