"""Start a run's own simulation SuperLink and name it in its Flower home: no `flwr` command probes or starts one.

For Flower's ``:local:`` connection every ``flwr`` command first probes the local
SuperLink's health with a 0.4 s timeout and, without an answer, starts one and
waits at most 15 s for it (Flower 1.42, ``flwr/cli/local_superlink.py``). On a
loaded machine both limits are missed: ``flwr run`` fails before the run starts,
and a ``flwr ls`` after a large federation starts a second SuperLink on the busy
ports, which fails. Here the SuperLink is started as Flower starts it, awaited as
long as the caller allows, and written into ``$FLWR_HOME/config.toml`` as the
default connection with its explicit address; Flower leaves such connections
alone.
"""

from __future__ import annotations

import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from simulations.flower_cli import LOOPBACK, venv_bin

#: The connection name the run's ``flwr`` commands use.
CONNECTION = "run-superlink"


def write_connection(home: Path, http_port: str) -> str:
    """Write ``home/config.toml`` with one default connection to ``LOOPBACK:http_port`` (insecure); return its name."""
    home.mkdir(parents=True, exist_ok=True)
    text = (
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{LOOPBACK}:{http_port}"\ninsecure = true\n'
    )
    (home / "config.toml").write_text(text)
    return CONNECTION


def start_superlink(home: Path, env: dict[str, str], ready_timeout: float) -> subprocess.Popen[bytes]:
    """Start a simulation SuperLink for the ports in ``env``, state and log under ``home``; wait until it answers.

    Parameters
    ----------
    home : Path
        The run's Flower home; the SuperLink's database and log go to ``home/local-superlink``.
    env : dict[str, str]
        The run's environment: ``FLWR_LOCAL_SUPERLINK_HTTP_API_PORT`` and ``FLWR_LOCAL_CONTROL_API_PORT``.
    ready_timeout : float
        Seconds to wait for its health endpoint.

    Returns
    -------
    subprocess.Popen[bytes]
        The SuperLink's process (in its own session, like Flower's own).

    Raises
    ------
    RuntimeError
        If it exits before answering, or does not answer in ``ready_timeout`` seconds
        (it is then stopped); the message names its log.
    """
    http_port = env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"]
    runtime = home / "local-superlink"
    runtime.mkdir(parents=True, exist_ok=True)
    log = runtime / "superlink.log"
    command = [
        venv_bin("flower-superlink"),
        "--insecure",
        "--simulation",
        "--isolation",
        "subprocess",
        # Flower's deprecated address, kept so the wrapper's clean-up finds the process by it.
        "--control-api-address",
        f"{LOOPBACK}:{env['FLWR_LOCAL_CONTROL_API_PORT']}",
        "--host",
        LOOPBACK,
        "--port",
        http_port,
        "--database",
        str(runtime / "state.db"),
        "--log-file",
        str(log),
    ]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {process.returncode}; see {log}")
        if _healthy(http_port):
            return process
        time.sleep(0.5)
    process.terminate()
    raise RuntimeError(f"flower-superlink did not answer within {ready_timeout:g} s; see {log}")


def _healthy(http_port: str) -> bool:
    """Whether the SuperLink's ``/health`` answers with success within a few seconds."""
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{http_port}/health", timeout=5.0) as reply:
            return 200 <= reply.status < 300
    except (urllib.error.URLError, OSError):
        return False
