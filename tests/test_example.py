"""The example app `examples/tabular-mlp` as a Flower user runs it, and the package as a wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from simulations.example_apps import EXAMPLES_DIR, run_example
from simulations.paths import PROJECT_DIR

pytestmark = pytest.mark.e2e  # the example app through `flwr run`, and a wheel build

EXAMPLE = EXAMPLES_DIR / "tabular-mlp"
ROUNDS = 10


def test_example_app_reaches_85_percent_through_flwr_run(tmp_path):
    # Prepare: a fresh Flower home, its own ports, the packages of this environment
    # (per-run dependency install off), 3 simulated SuperNodes
    run_configs = [
        f"num-server-rounds={ROUNDS} min-available-nodes=3",
        f"output-dir={json.dumps(str(tmp_path / 'out'))} run-name='test'",
    ]
    # Execute
    run = run_example(
        EXAMPLE,
        tmp_path / "flwr-home",
        federation_config="num-supernodes=3 client-resources-num-cpus=1",
        run_configs=run_configs,
    )
    # Assert: completed, every round evaluated, final accuracy at least 85%, nothing left running
    assert run.statuses == ["finished:completed"], run.log[-3000:]
    rounds = json.loads((tmp_path / "out" / "test" / "accuracy.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == list(range(ROUNDS + 1))
    assert rounds[-1]["accuracy"] >= 0.85, rounds
    assert f"round {ROUNDS} test accuracy" in run.log
    assert run.leftovers == []


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
