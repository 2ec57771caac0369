"""One writer per run folder: the run lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from fsl_sage_flwr.app.run_lock import LOCK_FILE, RunLock, RunLockedError
from simulations.testing import app_config


def _exited_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_held_lock_refuses_a_second_taker_naming_the_pid(tmp_path):
    # Prepare
    first = RunLock(tmp_path)
    first.acquire()
    # Execute / Assert
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path).acquire()
    first.release()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_stale_lock_of_an_exited_process_is_taken_over(tmp_path):
    # Prepare
    dead = _exited_pid()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    # Execute
    with RunLock(tmp_path):
        holder = json.loads((tmp_path / LOCK_FILE).read_text())
    # Assert
    assert holder["pid"] == os.getpid()


def test_a_lock_held_from_another_host_is_not_taken_over(tmp_path):
    # Prepare
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": _exited_pid(), "host": "elsewhere.invalid"}))
    # Execute / Assert
    with pytest.raises(RunLockedError, match="elsewhere.invalid"):
        RunLock(tmp_path).acquire()


def test_the_lock_is_released_when_the_holders_block_raises(tmp_path):
    # Prepare / Execute
    with pytest.raises(KeyError), RunLock(tmp_path):
        raise KeyError("boom")
    # Assert
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()


def test_a_run_on_a_held_folder_is_refused_before_it_writes_anything(tmp_path):
    from fsl_sage_flwr.app.client_app import app as client_app
    from fsl_sage_flwr.app.server_app import app as server_app
    from simulations.in_process import run_in_process

    # Prepare: a live process (this one) holds the run folder
    config = app_config(tmp_path, num_server_rounds=1, min_available_nodes=1)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    # Execute / Assert
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        run_in_process(server_app, client_app, config, num_nodes=1)
    assert sorted(p.name for p in folder.iterdir()) == [LOCK_FILE]
