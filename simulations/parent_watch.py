"""Stop a run's Flower processes when the wrapper that started them dies without doing so itself.

The wrapper (:mod:`simulations.flwr_run`) stops its SuperLink and simulation on
every way out it sees, but a SIGKILL leaves it none. It therefore starts this
watcher first, holding the write end of a pipe to the watcher's stdin. The
kernel closes that pipe when the wrapper ends, however it ends; a wrapper that
finished its own clean-up writes ``done`` first. End of input without ``done``
means the wrapper was killed: the watcher stops the SuperLink and every process
of the run, and writes :data:`INTERRUPTED_FILE` into the run folder.

Usage (started by the wrapper, not by hand)::

    python -m simulations.parent_watch --flwr-home DIR --control-port PORT --run-folder DIR
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

#: the file, in a run folder, that says the run was interrupted and why
INTERRUPTED_FILE = "interrupted.json"
#: what the wrapper writes to the watcher once it has cleaned up itself
DONE = b"done\n"


def write_interrupted(run_folder: Path, reason: str, flower_logs: Path | None = None) -> Path:
    """Write :data:`INTERRUPTED_FILE` into ``run_folder``: the run did not finish, and why.

    Parameters
    ----------
    run_folder : Path
        The run's results folder; created if missing.
    reason : str
        What ended the run.
    flower_logs : Path, optional
        Where Flower's logs of the run are, when they were kept.

    Returns
    -------
    Path
        The file written.
    """
    run_folder.mkdir(parents=True, exist_ok=True)
    record = {
        "interrupted": True,
        "reason": reason,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "flower_logs": str(flower_logs) if flower_logs is not None else "",
    }
    path = run_folder / INTERRUPTED_FILE
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def start_parent_watch(flwr_home: Path, control_port: str, run_folder: Path) -> subprocess.Popen:
    """Start the watcher for this process's run; call :func:`release_parent_watch` when cleaned up.

    Parameters
    ----------
    flwr_home : Path
        The run's private Flower home folder (marks its processes).
    control_port : str
        The port of the run's SuperLink Control API.
    run_folder : Path
        Where the interruption is recorded.

    Returns
    -------
    subprocess.Popen
        The watcher; its stdin is the pipe it watches.
    """
    command = [
        sys.executable,
        "-m",
        "simulations.parent_watch",
        "--flwr-home",
        str(flwr_home),
        "--control-port",
        str(control_port),
        "--run-folder",
        str(run_folder),
    ]
    # Its own session: a Ctrl-C in the terminal is for the wrapper, which then releases it.
    return subprocess.Popen(
        command, stdin=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent, start_new_session=True
    )


def release_parent_watch(watcher: subprocess.Popen, timeout: float = 10.0) -> None:
    """Tell the watcher the wrapper cleaned up itself, and wait for it to end."""
    assert watcher.stdin is not None
    try:
        watcher.stdin.write(DONE)
        watcher.stdin.close()
    except (BrokenPipeError, OSError):
        pass
    try:
        watcher.wait(timeout)
    except subprocess.TimeoutExpired:
        watcher.kill()
        watcher.wait()


def main(argv: list[str] | None = None) -> int:
    """Wait for the wrapper to end; clean up after it unless it said ``done``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flwr-home", required=True)
    parser.add_argument("--control-port", required=True)
    parser.add_argument("--run-folder", required=True)
    args = parser.parse_args(argv)
    # Blocks until the wrapper writes `done` and closes the pipe, or dies and the kernel closes it.
    received = sys.stdin.buffer.read()
    if received == DONE:
        return 0
    # Imported only now: the wrapper's helpers pull in Flower, which the common case never needs.
    from simulations.flwr_run import processes_of, stop_superlink
    from simulations.processes import stop_processes

    home = Path(args.flwr_home)
    stop_superlink(args.control_port)
    stop_processes(lambda: processes_of(home), grace=5.0)
    write_interrupted(
        Path(args.run_folder),
        "the wrapper (python -m simulations.flwr_run) was killed; its SuperLink and simulation were stopped",
        home / "local-superlink",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
