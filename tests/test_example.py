"""The example app `examples/tabular-mlp` as a Flower user runs it, and the package as a wheel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from simulations.flower_cli import flwr_executable
from simulations.flwr_run import flower_env, processes_of, stop_superlink
from simulations.paths import PROJECT_DIR

pytestmark = pytest.mark.e2e  # the example app through `flwr run`, and a wheel build

EXAMPLE = PROJECT_DIR / "examples" / "tabular-mlp"
ROUNDS = 10


def _stop_leftovers(home: Path) -> list[int]:
    """Wait for the run's processes to end; stop any that stay, one by one; return them."""
    deadline = time.monotonic() + 15
    while sorted(processes_of(home)) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = sorted(processes_of(home))
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def test_example_app_reaches_85_percent_through_flwr_run(tmp_path):
    # Prepare: a fresh Flower home, its own ports, the packages of this environment
    # (per-run dependency install off), 3 simulated SuperNodes
    home = tmp_path / "flwr-home"
    env = flower_env(home, install_dependencies=False)
    command = [
        flwr_executable(),
        "run",
        str(EXAMPLE),
        "--stream",
        "--federation-config",
        "num-supernodes=3 client-resources-num-cpus=1",
        "--run-config",
        f"num-server-rounds={ROUNDS} min-available-nodes=3",
        "--run-config",
        f"output-dir={json.dumps(str(tmp_path / 'out'))} run-name='test'",
    ]
    # Execute
    try:
        proc = subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=240)
        listing = subprocess.run(
            [flwr_executable(), "ls", "--format", "json"], env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        stop_superlink(env["FLWR_LOCAL_CONTROL_API_PORT"])
        leftovers = _stop_leftovers(home)
    # Assert: completed, every round evaluated, final accuracy at least 85%, nothing left running
    log = proc.stdout + proc.stderr
    runs = json.loads(listing.stdout)["runs"]
    assert [r["status"] for r in runs] == ["finished:completed"], log[-3000:]
    rounds = json.loads((tmp_path / "out" / "test" / "accuracy.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == list(range(ROUNDS + 1))
    assert rounds[-1]["accuracy"] >= 0.85, rounds
    assert f"round {ROUNDS} test accuracy" in log
    assert leftovers == []


def test_wheel_holds_the_package_and_imports_on_its_own(tmp_path):
    # Prepare: build the wheel a user's app would install
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(PROJECT_DIR), "--no-deps", "-q", "-w", str(wheels)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (wheel,) = wheels.glob("fsl_sage_flwr-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    # Execute: import from the installed wheel, not from the checkout
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import fsl_sage_flwr; from fsl_sage_flwr import SplitSpec; print(fsl_sage_flwr.__file__)",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Assert: the library alone (the repository's top-level folders stay out), importable on its own
    assert {"fsl_sage_flwr/__init__.py", "fsl_sage_flwr/plugin.py"} <= names
    assert {name.split("/")[0] for name in names if not name.startswith("fsl_sage_flwr-")} == {"fsl_sage_flwr"}
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(target)
