"""The floor benchmark runs the same algorithm as the Flower apps: same seed, same numbers."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch

from benchmarks.floor import build_parser, run_floor
from fsl_sage_flwr.app.client_app import app as client_app
from fsl_sage_flwr.app.results import read_results
from fsl_sage_flwr.app.server_app import app as server_app
from fsl_sage_flwr.core.models import required_input_shape
from fsl_sage_flwr.data import load_dataset, partition_indices
from simulations.in_process import run_in_process

pytestmark = pytest.mark.e2e  # a 10-client in-process run of the apps and the reference loop


def test_the_floor_loop_gives_the_flower_apps_accuracies(tmp_path):
    # Prepare: 10 digits clients, 3 rounds, an alignment after round 2
    settings = {
        "num-server-rounds": 3,
        "align-interval": 2,
        "align-epochs": 5,
        "batch-size": 16,
        "min-available-nodes": 10,
        "device": "cpu",
    }
    config = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    config = {**config, **settings, "output-dir": str(tmp_path), "run-name": "apps"}
    args = build_parser().parse_args(
        ["--rounds", "3", "--align-interval", "2", "--align-epochs", "5", "--batch-size", "16", "--clients", "10"]
    )
    data = load_dataset("digits", input_shape=required_input_shape("cnn"), seed=0)
    parts = partition_indices(data.train.labels, 10, partitioning="dirichlet", alpha=1.0, seed=0)
    # Execute
    run_in_process(server_app, client_app, config, 10)
    floor = run_floor(args, data, parts, torch.device("cpu"))
    # Assert
    apps = [row["accuracy"] for row in read_results(tmp_path / "apps" / "results.jsonl")][1:]
    assert [row["accuracy"] for row in floor["rounds"][1:]] == apps
