"""The runners' own local simulation SuperLink, started and awaited before `flwr run` is called.

`flwr run` and `flwr ls` start a local SuperLink themselves when the connection is
Flower's ``:local:`` one, but they give it 15 s to answer and probe its health with a
0.4 s timeout; on a loaded machine (measured at a load average of 17 on 2 cores) the
start fails, or a later `flwr ls` decides no SuperLink is running and starts a second
one that fails. The runners therefore start the same simulation SuperLink themselves,
wait for it as long as needed, and name it by address in ``$FLWR_HOME/config.toml``, so
neither command ever starts one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from simulations.flower_cli import LOOPBACK, venv_bin

#: Name of the connection the runners write into ``$FLWR_HOME/config.toml``.
CONNECTION_NAME = "local-simulation"


class SuperLinkStartError(RuntimeError):
    """The local SuperLink exited or did not answer in time."""


def superlink_command(home: Path, http_port: str, control_port: str) -> list[str]:
    """Return the command line of a simulation SuperLink, as `flwr run` would start it.

    Parameters
    ----------
    home : Path
        The run's ``$FLWR_HOME``; the SuperLink's database and log go under
        ``local-superlink/`` there, where `flwr run` keeps them.
    http_port, control_port : str
        Its HTTP API port (Control, Fleet and ServerApp side) and the Control API
        port, which also names this SuperLink among running processes.
    """
    folder = home / "local-superlink"
    folder.mkdir(parents=True, exist_ok=True)
    return [
        venv_bin("flower-superlink"),
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        "--control-api-address",
        f"{LOOPBACK}:{control_port}",
        "--host",
        LOOPBACK,
        "--port",
        http_port,
        "--database",
        str(folder / "state.db"),
        "--log-file",
        str(folder / "superlink.log"),
    ]


def write_connection(home: Path, http_port: str) -> Path:
    """Make the SuperLink on ``http_port`` the default connection of ``home``; return the file."""
    path = home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{CONNECTION_NAME}"\n\n'
        f'[superlink.{CONNECTION_NAME}]\naddress = "{LOOPBACK}:{http_port}"\ninsecure = true\n'
    )
    return path


def start_local_superlink(
    home: Path, env: dict[str, str], http_port: str, control_port: str, timeout: float = 180.0
) -> subprocess.Popen:
    """Start the simulation SuperLink, wait until it answers, and point ``home``'s connection at it.

    Parameters
    ----------
    home : Path
        The run's ``$FLWR_HOME`` (also set in ``env``).
    env : dict[str, str]
        Environment of the SuperLink and of the simulation it starts.
    http_port, control_port : str
        Its ports, free a moment ago.
    timeout : float
        Seconds to wait for its health endpoint.

    Returns
    -------
    subprocess.Popen
        The SuperLink process, in its own process group.

    Raises
    ------
    SuperLinkStartError
        If it exits or does not answer within ``timeout`` seconds (its log is named).
    """
    command = superlink_command(home, http_port, control_port)
    log_path = home / "local-superlink" / "superlink.log"
    # The SuperLink starts flower-superexec from PATH: this environment's, as its own.
    env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}
    # What the SuperLink prints before its log file opens (a port in use) goes beside it.
    with open(home / "local-superlink" / "superlink.out", "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SuperLinkStartError(
                f"flower-superlink exited with code {process.returncode}; see {log_path} and superlink.out beside it"
            )
        if _answers(http_port):
            write_connection(home, http_port)
            return process
        time.sleep(0.5)
    process.kill()
    raise SuperLinkStartError(f"flower-superlink did not answer within {timeout:.0f} s; see {log_path}")


def _answers(http_port: str) -> bool:
    """Whether the SuperLink's health endpoint answers (a generous timeout: the machine may be busy)."""
    try:
        return httpx.get(f"http://{LOOPBACK}:{http_port}/health", timeout=5.0).is_success
    except httpx.HTTPError:
        return False
