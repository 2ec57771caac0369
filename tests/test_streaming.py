"""The wrapper's output streaming: a deadline that fires without output, and children that die with their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from simulations.flwr_run import FlwrRunError, _stream
from simulations.processes import alive
from simulations.streaming import StreamTimeout, stream_command


def _wait_until_ended(pid: int, limit: float = 10.0) -> bool:
    """Poll until ``pid`` has ended or ``limit`` seconds passed; return whether it ended."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return not alive(pid)


def test_a_silent_command_is_stopped_at_its_deadline_with_its_children():
    # Prepare: a shell that starts a long sleep, names it, then prints nothing more
    command = ["sh", "-c", "sleep 30 & echo $!; wait"]
    lines: list[str] = []

    # Execute
    with pytest.raises(StreamTimeout, match="timeout of 1.5 s"):
        stream_command(command, dict(os.environ), 1.5, lines, echo=False, grace=1.0)

    # Assert: the sleep could not have ended by itself, so it was stopped
    assert len(lines) == 1
    assert _wait_until_ended(int(lines[0]), limit=2.0)


def test_the_wrapper_stream_fails_naming_the_timeout_for_a_silent_child():
    # Prepare
    lines: list[str] = []

    # Execute / Assert: `sleep 30` prints nothing, yet the 1 s deadline still fires
    with pytest.raises(FlwrRunError, match="--timeout 1 s"):
        _stream(["sleep", "30"], dict(os.environ), 1.0, False, None, lines)
    assert lines == []


def test_output_lines_and_exit_status_come_back():
    # Prepare
    lines: list[str] = []
    seen: list[str] = []

    # Execute
    status = stream_command(
        ["sh", "-c", "echo one; echo two; exit 3"], dict(os.environ), 30.0, lines, echo=False, on_line=seen.append
    )

    # Assert
    assert status == 3
    assert lines == ["one\n", "two\n"] == seen


def test_a_child_started_with_die_with_parent_ends_when_its_parent_is_killed():
    # Prepare: a parent that starts `sleep 60` under die_with_parent and reports its pid
    parent_code = (
        "import subprocess, sys, time\n"
        "from simulations.processes import die_with_parent\n"
        "child = subprocess.Popen(['sleep', '60'], preexec_fn=die_with_parent)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert alive(child)

    # Execute: SIGKILL leaves the parent no chance to stop its child itself
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    # Assert
    assert _wait_until_ended(child)
    parent.stdout.close()


def test_a_deadline_that_is_not_positive_is_refused():
    with pytest.raises(ValueError, match="timeout must be > 0"):
        stream_command(["true"], dict(os.environ), 0.0, [])
