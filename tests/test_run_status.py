"""The wrapper reads a run's status through its own SuperLink connection and retries `flwr ls` under load."""

from __future__ import annotations

import tomllib

import pytest

import simulations.run_status as run_status_module
from simulations.flwr_run import federation_config
from simulations.local_superlink import CONNECTION, start_superlink, write_connection
from simulations.run_status import RunStatusError, run_status

ANSWER = '{"success": true, "runs": [{"run-id": 1, "status": "finished:completed", "status-details": ""}]}'
BUSY = '{"success": false, "error-message": "Connection to the SuperLink is unavailable."}'


def _fake_flwr(tmp_path, monkeypatch, busy_tries: int) -> list[str]:
    """A `flwr` that answers BUSY ``busy_tries`` times, then ANSWER; returns where its arguments are logged."""
    calls = tmp_path / "calls"
    script = tmp_path / "flwr"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> {calls}\n'
        f"if [ \"$(wc -l < {calls})\" -le {busy_tries} ]; then echo '{BUSY}'; else echo '{ANSWER}'; fi\n"
    )
    script.chmod(0o755)
    monkeypatch.setattr(run_status_module, "flwr_executable", lambda: str(script))
    return calls


def test_flwr_ls_is_retried_with_growing_pauses_until_it_answers(tmp_path, monkeypatch):
    # Prepare: two busy answers first
    calls = _fake_flwr(tmp_path, monkeypatch, busy_tries=2)
    pauses: list[float] = []

    # Execute
    status = run_status({}, attempts=4, first_pause=1.5, sleep=pauses.append)

    # Assert
    assert status == ("finished:completed", "")
    assert pauses == [1.5, 3.0]
    assert calls.read_text().splitlines() == [f"ls {CONNECTION} --format json"] * 3


def test_flwr_ls_that_never_answers_fails_naming_every_try(tmp_path, monkeypatch):
    # Prepare
    _fake_flwr(tmp_path, monkeypatch, busy_tries=10)

    # Execute / Assert
    with pytest.raises(RunStatusError, match=r"(?s)try 1: .*unavailable.*try 3: .*unavailable"):
        run_status({}, attempts=3, sleep=lambda s: None)


def test_the_connection_names_the_superlink_address_and_is_the_default(tmp_path):
    # Execute
    name = write_connection(tmp_path, "41234")

    # Assert
    config = tomllib.loads((tmp_path / "config.toml").read_text())["superlink"]
    assert config["default"] == name
    assert config[name] == {"address": "127.0.0.1:41234", "insecure": True}


def test_a_superlink_that_exits_at_once_fails_naming_its_log(tmp_path, monkeypatch):
    # Prepare: a `flower-superlink` that exits with an error
    fake = tmp_path / "flower-superlink"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setattr("simulations.local_superlink.venv_bin", lambda name: str(fake))
    env = {"FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": "1", "FLWR_LOCAL_CONTROL_API_PORT": "2"}

    # Execute / Assert
    with pytest.raises(RuntimeError, match=r"exited with code 3; see .*superlink\.log"):
        start_superlink(tmp_path, env, ready_timeout=30.0)


def test_fractional_gpus_go_into_the_federation_config_only_when_asked_for():
    assert federation_config(10, 2.0, 0.125) == (
        "num-supernodes=10 client-resources-num-cpus=2 client-resources-num-gpus=0.125"
    )
    assert federation_config(3, 1.0, 0.0) == "num-supernodes=3 client-resources-num-cpus=1"
    with pytest.raises(ValueError, match="gpus_per_client"):
        federation_config(3, 1.0, 1.5)
