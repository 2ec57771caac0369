"""Run a command, streaming its output, under a deadline that holds even while it prints nothing."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

from simulations.processes import alive, descendants, die_with_parent, stop_processes

#: what the reader thread puts on the queue once the output has ended
_END = None


class StreamTimeout(RuntimeError):
    """The command was still running at its deadline; it and its descendants were stopped."""


def stream_command(
    command: list[str],
    env: dict[str, str],
    timeout: float,
    lines: list[str],
    *,
    echo: bool = True,
    on_line: Callable[[str], None] | None = None,
    grace: float = 5.0,
) -> int:
    """Run ``command``, keeping its output lines in ``lines``; return its exit status.

    A thread reads the output, so the deadline is checked on a clock, not when a
    line arrives: a command that hangs silently is stopped ``timeout`` seconds
    after it started. The command dies with this process (Linux ``PR_SET_PDEATHSIG``).

    Parameters
    ----------
    command : list[str]
        The program and its arguments.
    env : dict[str, str]
        Its environment.
    timeout : float
        Seconds it may run.
    lines : list[str]
        Receives every output line (stdout and stderr together), also when this raises.
    echo : bool
        Copy the output to this process's stdout.
    on_line : Callable[[str], None], optional
        Called with every output line.
    grace : float
        Seconds between SIGTERM and SIGKILL when the command is stopped.

    Raises
    ------
    StreamTimeout
        When the command still ran after ``timeout`` seconds; it and every process
        below it were stopped first.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
    deadline = time.monotonic() + timeout
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=die_with_parent,
    )
    assert proc.stdout is not None
    received: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(proc.stdout, received), daemon=True)
    reader.start()
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise StreamTimeout(f"{command[0]} still ran after the timeout of {timeout:g} s; it was stopped")
            try:
                line = received.get(timeout=min(left, 1.0))
            except queue.Empty:
                continue
            if line is _END:
                break
            lines.append(line)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
            if on_line is not None:
                on_line(line)
        return proc.wait()
    finally:
        if proc.poll() is None:
            # Children the command started (a server, its workers) go too, not only the command.
            tree = descendants({proc.pid})
            stop_processes(lambda: {p for p in descendants(tree) if alive(p)}, grace=grace)
            proc.wait()
        reader.join(timeout=grace)
        proc.stdout.close()


def _read_lines(stream: IO[str], received: queue.Queue[str | None]) -> None:
    """Put every line of ``stream`` on ``received``, then the end marker."""
    try:
        for line in stream:
            received.put(line)
    except (OSError, ValueError):  # the stream was closed under the reader
        pass
    finally:
        received.put(_END)
