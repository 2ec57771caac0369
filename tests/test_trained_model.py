"""A finished run's trained network loads from its run folder in one call."""

from __future__ import annotations

import pytest
import torch

from fsl_sage_flwr import builtin_spec, load_trained_model
from fsl_sage_flwr.app.client_app import app as client_app
from fsl_sage_flwr.app.results import read_results
from fsl_sage_flwr.app.server_app import app as server_app
from fsl_sage_flwr.core.checkpoint import atomic_save
from fsl_sage_flwr.core.training import evaluate_classifier
from fsl_sage_flwr.data import load_dataset
from simulations.in_process import run_in_process
from simulations.testing import app_config

SPEC = builtin_spec("cnn", num_classes=10, input_shape=(1, 8, 8))


def test_the_saved_parts_load_into_the_spec_joined_and_in_eval_mode(tmp_path):
    # Prepare: a split's parts saved as a run saves them
    torch.manual_seed(3)
    trained = SPEC.build()
    atomic_save(trained.client.state_dict(), tmp_path / "client_model.pt")
    atomic_save(trained.server.state_dict(), tmp_path / "server_model.pt")
    # Execute
    model = load_trained_model(tmp_path, SPEC)
    # Assert
    assert not model.training
    for name, tensor in trained.client.state_dict().items():
        assert torch.equal(model.client.state_dict()[name], tensor)
    for name, tensor in trained.server.state_dict().items():
        assert torch.equal(model.server.state_dict()[name], tensor)


def test_a_folder_without_models_is_refused_naming_the_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="full_model.pt or client_model.pt and server_model.pt"):
        load_trained_model(tmp_path, SPEC)


@pytest.mark.e2e  # two in-process runs of the apps, two rounds each
@pytest.mark.parametrize("algorithm", ["fsl-sage", "fedavg"])
def test_the_loaded_model_scores_the_runs_final_accuracy(tmp_path, algorithm):
    # Prepare: a 2-round run of the app on digits
    config = app_config(tmp_path, algorithm=algorithm, num_server_rounds=2, min_available_nodes=2, device="cpu")
    run_in_process(server_app, client_app, config, num_nodes=2)
    data = load_dataset("digits", input_shape=(1, 8, 8), seed=0)
    # Execute
    model = load_trained_model(tmp_path / "run", SPEC)
    _, accuracy = evaluate_classifier(model, torch.from_numpy(data.test.images), torch.from_numpy(data.test.labels))
    # Assert
    assert accuracy == read_results(tmp_path / "run" / "results.jsonl")[-1]["accuracy"]
