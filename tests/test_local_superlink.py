"""The runners' own simulation SuperLink: awaited before use, found by address, failures named."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tomllib

import pytest

from simulations.flower_cli import LOOPBACK, flwr_executable, free_port
from simulations.local_superlink import CONNECTION_NAME, SuperLinkStartError, start_local_superlink
from simulations.processes import stop_process_group


def _env(home, http_port, control_port):
    return {
        **os.environ,
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": http_port,
        "FLWR_LOCAL_CONTROL_API_PORT": control_port,
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }


def test_started_superlink_is_the_default_connection_and_flwr_ls_uses_it(tmp_path):
    # Prepare
    http_port, control_port = str(free_port()), str(free_port())
    env = _env(tmp_path, http_port, control_port)
    # Execute
    process = start_local_superlink(tmp_path, env, http_port, control_port, timeout=120)
    try:
        listed = subprocess.run(
            [flwr_executable(), "ls", "--format", "json"], env=env, capture_output=True, text=True, timeout=120
        )
        alive_after_ls = process.poll() is None
    finally:
        stop_process_group(process.pid)
    # Assert: the connection names the address, so `flwr ls` neither probes nor starts another SuperLink
    config = tomllib.loads((tmp_path / "config.toml").read_text())
    assert config["superlink"]["default"] == CONNECTION_NAME
    assert config["superlink"][CONNECTION_NAME]["address"] == f"{LOOPBACK}:{http_port}"
    assert json.loads(listed.stdout)["runs"] == [], listed.stdout + listed.stderr
    assert "Starting local SuperLink" not in listed.stdout + listed.stderr
    assert alive_after_ls


def test_a_superlink_that_cannot_start_is_named_with_its_log(tmp_path):
    # Prepare: the HTTP port is taken, so flower-superlink exits
    with socket.socket() as taken:
        taken.bind((LOOPBACK, 0))
        taken.listen()
        http_port, control_port = str(taken.getsockname()[1]), str(free_port())
        # Execute
        with pytest.raises(SuperLinkStartError) as err:
            start_local_superlink(
                tmp_path, _env(tmp_path, http_port, control_port), http_port, control_port, timeout=120
            )
    # Assert
    assert "superlink.log" in str(err.value)
    assert not (tmp_path / "config.toml").exists()
