"""Run an app under ``examples/`` through plain ``flwr run`` as its users do, and clean up after it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from simulations.flower_cli import flwr_executable
from simulations.flwr_run import flower_env, processes_of, stop_superlink
from simulations.paths import PROJECT_DIR

#: The example apps, by folder name.
EXAMPLES_DIR = PROJECT_DIR / "examples"


@dataclass(frozen=True)
class ExampleRun:
    """What one ``flwr run`` of an example left behind.

    Attributes
    ----------
    statuses : list[str]
        The status of every run the SuperLink knew (``flwr ls``), e.g. ``["finished:completed"]``.
    log : str
        ``flwr run --stream``'s output and errors.
    leftovers : list[int]
        Processes of the run still alive 15 s after its SuperLink was stopped (then killed).
    wall_seconds : float
        How long ``flwr run`` took, SuperLink start included.
    """

    statuses: list[str]
    log: str
    leftovers: list[int]
    wall_seconds: float


def run_example(
    example: Path, home: Path, *, federation_config: str, run_configs: list[str], timeout: float = 240
) -> ExampleRun:
    """``flwr run <example> --stream`` with a fresh Flower home ``home``, then stop what it started.

    The local SuperLink gets its own ports and imports this environment's packages
    (per-run dependency install off).

    Parameters
    ----------
    example : Path
        The app's folder (its ``pyproject.toml`` names the components).
    home : Path
        A Flower home folder of this run only; its processes are found by it.
    federation_config : str
        ``--federation-config``, e.g. ``"num-supernodes=3 client-resources-num-cpus=1"``.
    run_configs : list[str]
        Each one ``--run-config`` argument.
    timeout : float
        Seconds ``flwr run`` may take (``subprocess.TimeoutExpired`` after).
    """
    env = flower_env(home, install_dependencies=False)
    command = [flwr_executable(), "run", str(example), "--stream", "--federation-config", federation_config]
    for run_config in run_configs:
        command += ["--run-config", run_config]
    started = time.monotonic()
    try:
        proc = subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=timeout)
        wall_seconds = time.monotonic() - started
        listing = subprocess.run(
            [flwr_executable(), "ls", "--format", "json"], env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        stop_superlink(env["FLWR_LOCAL_CONTROL_API_PORT"])
        leftovers = stop_leftovers(home)
    statuses = [run["status"] for run in json.loads(listing.stdout)["runs"]] if listing.returncode == 0 else []
    return ExampleRun(statuses, proc.stdout + proc.stderr, leftovers, wall_seconds)


def stop_leftovers(home: Path) -> list[int]:
    """Wait for the processes of the run in ``home`` to end; kill any that stay, one by one; return them."""
    deadline = time.monotonic() + 15
    while processes_of(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = sorted(processes_of(home))
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left
