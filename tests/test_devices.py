"""Devices: the run-config key, and whole runs on every device this machine has."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import torch

from fsl_sage_flwr.app.client_app import app as client_app
from fsl_sage_flwr.app.results import read_results
from fsl_sage_flwr.app.server_app import app as server_app
from fsl_sage_flwr.core.devices import resolve_device
from simulations.in_process import run_in_process

pytestmark = pytest.mark.e2e  # runs of every algorithm on each device

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def test_auto_picks_a_gpu_when_torch_sees_one():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "CPU", "cuda:1:2", ""])
def test_unknown_device_names_are_refused_naming_the_choices(name):
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda, cuda:N"):
        resolve_device(name)


def test_a_cuda_device_the_machine_lacks_is_refused():
    missing = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ValueError, match=f"torch sees {missing} CUDA device"):
        resolve_device(f"cuda:{missing}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("algorithm", ["fsl-sage", "cse-fsl", "fedavg", "splitfed-ss"])
def test_a_short_run_learns_on_each_device(tmp_path, device, algorithm):
    # Prepare
    config = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    config = {
        **config,
        "algorithm": algorithm,
        "device": device,
        "num-server-rounds": 3,
        "align-epochs": 5,
        "output-dir": str(tmp_path),
        "run-name": "run",
    }
    # Execute
    run_in_process(server_app, client_app, config, 3)
    # Assert: the models left the chance level and were saved loadable on the CPU
    rows = read_results(tmp_path / "run" / "results.jsonl")
    assert rows[-1]["accuracy"] > 0.5
    saved = next((tmp_path / "run").glob("*_model.pt"))
    assert all(t.device.type == "cpu" for t in torch.load(saved, weights_only=True).values())
