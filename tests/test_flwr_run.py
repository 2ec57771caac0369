"""`flwr run` end to end: the checked wrapper, and a plain run as a Flower user types it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from simulations.flower_cli import flwr_executable
from simulations.flwr_run import FlwrRunError, flower_env, run_app, stop_superlink
from simulations.paths import PROJECT_DIR

pytestmark = pytest.mark.e2e  # `flwr run` with Ray simulation and SuperLink processes

SHORT = {"num-server-rounds": 2, "align-epochs": 2, "align-interval": 1}


def _superlink_running(control_port: str) -> bool:
    out = subprocess.run(["pgrep", "-f", f"flower-superlink.*127.0.0.1:{control_port}"], capture_output=True)
    return out.returncode == 0


def test_wrapper_runs_to_completion_and_checks_the_results(tmp_path):
    # Execute: 3 simulated SuperNodes through Ray
    outcome = run_app(
        {**SHORT, "min-available-nodes": 3, "output-dir": str(tmp_path), "run-name": "w"},
        num_supernodes=3,
        timeout=300,
        echo=False,
    )
    # Assert
    assert outcome.status == "finished:completed"
    assert [r["round"] for r in outcome.rows] == [0, 1, 2]
    assert outcome.results_path == tmp_path / "w" / "results.jsonl"


def test_wrapper_fails_loudly_when_the_run_fails(tmp_path):
    # Prepare: a dataset that does not exist makes the ServerApp raise
    config = {
        **SHORT,
        "dataset": "mnist",
        "data-dir": str(tmp_path / "none"),
        "output-dir": str(tmp_path),
        "run-name": "f",
    }
    # Execute / Assert: the message carries the ServerApp's own error, from Flower's status details
    with pytest.raises(FlwrRunError, match="'finished:failed': Simulation failed with exception: mnist: IDX files"):
        run_app(config, num_supernodes=2, timeout=300, echo=False)


def _why_uv_cannot_reach_its_index() -> str | None:
    """Say why uv, which the SuperLink runs for each run, finds no package index; None if it can."""
    if os.environ.get("UV_OFFLINE", "").lower() in ("1", "true", "yes"):
        return "UV_OFFLINE is set"
    index = os.environ.get("UV_DEFAULT_INDEX") or os.environ.get("UV_INDEX_URL") or "https://pypi.org/simple"
    probe = f"{index.rstrip('/')}/flwr-datasets/"
    try:
        with urllib.request.urlopen(probe, timeout=10):
            return None
    except (OSError, ValueError) as err:
        return f"{probe} is unreachable ({err})"


def test_plain_flwr_run_with_a_fresh_home_installs_no_torch(tmp_path):
    # The SuperLink's per-run `uv sync` installs the app's dependencies from a package
    # index; without one the run cannot start, which says nothing about this app.
    unreachable = _why_uv_cannot_reach_its_index()
    if unreachable:
        pytest.skip(f"no package index for the per-run dependency install of `flwr run`: {unreachable}")
    # Prepare: what a Flower user types, with a fresh Flower home; the SuperLink's
    # per-run `uv sync` stays on (it must not pull a CUDA build of torch).
    env = flower_env(tmp_path / "flwr-home", install_dependencies=True)
    overrides = {**SHORT, "output-dir": str(tmp_path), "run-name": "plain"}
    command = [flwr_executable(), "run", ".", "--stream"]
    for key, value in overrides.items():
        command += ["--run-config", f"{key}={json.dumps(value)}"]
    # Execute
    try:
        proc = subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=600)
        runs = json.loads(
            subprocess.run(
                [flwr_executable(), "ls", "--format", "json"], env=env, capture_output=True, text=True
            ).stdout
        )["runs"]
    finally:
        stop_superlink(env["FLWR_LOCAL_CONTROL_API_PORT"])
    # Assert: completed; uv installed the app's dependencies, none of them torch or CUDA
    log = proc.stdout + proc.stderr
    assert runs[0]["status"] == "finished:completed", log[-3000:]
    installed = next(line for line in log.splitlines() if "Installed: [" in line)
    assert "flwr-datasets" in installed
    assert "torch" not in installed and "nvidia" not in installed
    rows = [json.loads(line) for line in (tmp_path / "plain" / "results.jsonl").read_text().splitlines()]
    assert rows[-1]["round"] == 2
    assert not _superlink_running(env["FLWR_LOCAL_CONTROL_API_PORT"])


def test_compare_exits_non_zero_and_names_the_failed_strategy(tmp_path, capsys):
    # Prepare: a data folder that does not exist makes the run fail
    from simulations.compare import main

    argv = [
        "--strategies",
        "fedavg",
        "--dataset",
        "mnist",
        "--clients",
        "2",
        "--rounds",
        "1",
        "--output-dir",
        str(tmp_path),
        "--run-config",
        f"data-dir='{tmp_path / 'none'}'",
    ]
    # Execute
    code = main(argv)
    # Assert
    assert code == 1
    assert "FAILED strategies: fedavg" in capsys.readouterr().err


def _tree(pid: int) -> set[int]:
    """``pid`` and its descendants now."""
    found, stack = set(), [pid]
    while stack:
        current = stack.pop()
        found.add(current)
        try:  # a process may end while it is read
            for task in Path(f"/proc/{current}/task").iterdir():
                stack += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _with_marker(marker: bytes) -> set[int]:
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes():
                pids.add(int(proc.name))
        except OSError:
            pass
    return pids


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _survivors(pids: set[int], settle: float = 10.0) -> list[int]:
    """The processes of ``pids`` still running once those already killed had ``settle`` seconds to exit."""
    deadline = time.monotonic() + settle
    while (left := [p for p in pids if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


def test_sigterm_stops_the_wrapper_with_every_process_it_started_and_removes_its_home(tmp_path, request):
    # Prepare: a long run through the wrapper, its temporary Flower home in a folder of
    # this test's (a short path: Ray's socket paths must stay under 108 bytes)
    temp = Path(tempfile.mkdtemp(prefix="fr-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(temp, ignore_errors=True))
    wrapper = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulations.flwr_run",
            "--num-supernodes",
            "2",
            "--output-dir",
            str(tmp_path),
            "--run-name",
            "s",
            "--run-config",
            "num-server-rounds=200 align-epochs=2 align-interval=1",
        ],
        cwd=PROJECT_DIR,
        env={**os.environ, "TMPDIR": str(temp)},
        stdout=(tmp_path / "wrapper.log").open("w"),
        stderr=subprocess.PIPE,
        text=True,
    )
    results = tmp_path / "s" / "results.jsonl"
    seen: set[int] = set()
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and wrapper.poll() is None:
            seen |= _tree(wrapper.pid) | _with_marker(str(temp).encode())
            if results.exists() and len(results.read_text().splitlines()) >= 3:  # rounds 0-2: clients run
                break
            time.sleep(0.2)
        seen |= _tree(wrapper.pid) | _with_marker(str(temp).encode())
        assert wrapper.poll() is None, (tmp_path / "wrapper.log").read_text()[-3000:]
        homes = list(temp.glob("flwr-home-*"))
        assert len(homes) == 1
        # Execute
        wrapper.send_signal(signal.SIGTERM)
        _, err = wrapper.communicate(timeout=120)
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
    # Assert: non-zero exit; nothing it started survives; the home folder is gone
    assert wrapper.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "STOPPED" in err
    seen.discard(wrapper.pid)
    assert len(seen) >= 3  # flwr run, SuperLink and more were seen running
    survivors = _survivors(seen | _with_marker(str(temp).encode()))
    assert not survivors, [Path(f"/proc/{p}/cmdline").read_bytes()[:200] for p in survivors]
    assert not homes[0].exists()
    assert "SIGTERM" in json.loads((tmp_path / "s" / "interrupted.json").read_text())["reason"]


def test_sigkill_of_the_wrapper_still_stops_the_run_and_the_run_folder_says_so(tmp_path, request):
    # Prepare: a long run through the wrapper, as above
    temp = Path(tempfile.mkdtemp(prefix="fk-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(temp, ignore_errors=True))
    wrapper = subprocess.Popen(
        [sys.executable, "-m", "simulations.flwr_run", "--num-supernodes", "2", "--output-dir", str(tmp_path)]
        + ["--run-name", "k", "--run-config", "num-server-rounds=200 align-epochs=2 align-interval=1"],
        cwd=PROJECT_DIR,
        env={**os.environ, "TMPDIR": str(temp)},
        stdout=(tmp_path / "wrapper.log").open("w"),
        stderr=subprocess.DEVNULL,
    )
    results = tmp_path / "k" / "results.jsonl"
    seen: set[int] = set()
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and wrapper.poll() is None:
            seen |= _tree(wrapper.pid) | _with_marker(str(temp).encode())
            if results.exists() and len(results.read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        assert wrapper.poll() is None, (tmp_path / "wrapper.log").read_text()[-3000:]
        # Execute: no chance for the wrapper to clean up
        wrapper.send_signal(signal.SIGKILL)
        wrapper.wait()
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
    # Assert: within a minute nothing of the run is left, and the run folder says why it stopped
    seen.discard(wrapper.pid)
    marker = tmp_path / "k" / "interrupted.json"
    end = time.monotonic() + 60
    while time.monotonic() < end and (
        any(_running(p) for p in seen | _with_marker(str(temp).encode())) or not marker.exists()
    ):
        time.sleep(0.5)
    survivors = [p for p in seen | _with_marker(str(temp).encode()) if _running(p)]
    assert not survivors, [Path(f"/proc/{p}/cmdline").read_bytes()[:200] for p in survivors]
    assert "killed" in json.loads(marker.read_text())["reason"]
