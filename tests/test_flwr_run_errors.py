"""The wrapper's failure message names the ServerApp's error, from Flower's status details or the log."""

from __future__ import annotations

import json

import pytest

import simulations.flwr_run as flwr_run
from simulations.flwr_run import FlwrRunError, last_error_line, main, run_app

RAY_LOG = """\
ERROR :   Simulation raised an exception
Traceback (most recent call last):
  File "/x/flwr/simulation/run_simulation.py", line 369, in _main_loop
    raise thread_ex.with_traceback(thread_ex.__traceback__)
fsl_sage_flwr.app.deadlines.RunDeadlineExceeded: the run passed its 'run-timeout' of 2 s in round 3
ERROR :   An error was encountered. Ending simulation.
"""


def _fake_run(monkeypatch, log: str, status: str, details: str) -> None:
    """Let run_app see ``log`` streamed and ``status``/``details`` from `flwr ls`, starting nothing."""

    def stream(command, env, timeout, echo, on_line, lines):
        lines.append(log)

    monkeypatch.setattr(flwr_run, "_stream", stream)
    monkeypatch.setattr(flwr_run, "_start_superlink", lambda home, env: None)
    monkeypatch.setattr(flwr_run, "_run_status", lambda env: (status, details))
    monkeypatch.setattr(flwr_run, "stop_superlink", lambda port: None)
    monkeypatch.setattr(flwr_run, "stop_processes", lambda find, grace: set())


def test_the_last_exception_line_of_a_traceback_is_found_under_flower_headers():
    assert last_error_line(RAY_LOG) == (
        "fsl_sage_flwr.app.deadlines.RunDeadlineExceeded: the run passed its 'run-timeout' of 2 s in round 3"
    )
    assert last_error_line("INFO : all fine\n") == ""


def test_a_failed_run_names_flower_status_details(monkeypatch, tmp_path):
    # Prepare: Flower reports the ServerApp's exception as the run's status details
    details = "Simulation failed with exception: round 2: evaluation loss not finite, as in round 1"
    _fake_run(monkeypatch, "INFO : starting\n", "finished:failed", details)

    # Execute / Assert
    with pytest.raises(FlwrRunError, match="run ended 'finished:failed': Simulation failed with exception: round 2"):
        run_app({"output-dir": str(tmp_path), "run-name": "r"}, echo=False)


def test_without_status_details_the_cause_comes_from_the_log(monkeypatch, tmp_path):
    # Prepare
    _fake_run(monkeypatch, RAY_LOG, "finished:failed", "")

    # Execute / Assert
    with pytest.raises(FlwrRunError, match="RunDeadlineExceeded: the run passed its 'run-timeout'"):
        run_app({"output-dir": str(tmp_path), "run-name": "r"}, echo=False)


def test_the_command_line_prints_the_cause_and_exits_non_zero(monkeypatch, tmp_path, capsys):
    # Prepare
    _fake_run(monkeypatch, RAY_LOG, "finished:failed", "Simulation failed with exception: no node warmed up")
    monkeypatch.setattr(flwr_run, "become_subreaper", lambda: None)  # a property of this test process otherwise

    # Execute
    code = main(["--output-dir", str(tmp_path), "--run-name", "r", "--num-supernodes", "2"])

    # Assert
    assert code == 1
    assert "FAILED: run ended 'finished:failed': Simulation failed with exception: no node warmed up" in (
        capsys.readouterr().err
    )


def test_a_silent_flwr_run_is_stopped_at_the_timeout_and_the_run_folder_says_so(monkeypatch, tmp_path):
    # Prepare: a `flwr` that prints nothing and never ends
    fake = tmp_path / "flwr"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setattr(flwr_run, "flwr_executable", lambda: str(fake))
    monkeypatch.setattr(flwr_run, "_start_superlink", lambda home, env: None)

    # Execute / Assert
    with pytest.raises(FlwrRunError, match="exceeded --timeout 1 s"):
        run_app({"output-dir": str(tmp_path / "out"), "run-name": "r"}, timeout=1.0, echo=False)
    record = json.loads((tmp_path / "out" / "r" / "interrupted.json").read_text())
    assert "exceeded --timeout 1 s" in record["reason"]
