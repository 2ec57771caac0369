"""Tests of the ``autocast`` setting: bfloat16 forward passes on clients and server, float32 otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from fsl_sage_flwr.app.client_app import app as client_app
from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.app.results import read_results
from fsl_sage_flwr.app.server_app import app as server_app
from fsl_sage_flwr.clients import FSLSageClient
from fsl_sage_flwr.core.devices import autocast
from fsl_sage_flwr.core.models import build_split_model
from fsl_sage_flwr.plugin import as_dataset
from fsl_sage_flwr.strategies import upload_training
from fsl_sage_flwr.transport.local_training import LocalTraining
from fsl_sage_flwr.transport.replies import ParsedReply
from fsl_sage_flwr.transport.requests import TrainRequest
from fsl_sage_flwr.transport.uploads import SmashedUpload
from simulations.in_process import run_in_process
from simulations.testing import app_config


def _bfloat16_representable(z: np.ndarray) -> bool:
    """Whether every float32 value is a widened bfloat16: its low 16 bits are zero."""
    return bool(np.all(z.view(np.uint32) & 0xFFFF == 0))


@pytest.mark.parametrize(("mode", "dtype"), [("off", torch.float32), ("bfloat16", torch.bfloat16)])
def test_autocast_runs_matrix_products_in_the_chosen_precision(mode, dtype):
    a = torch.randn(4, 4)
    with autocast("cpu", mode):
        assert (a @ a).dtype == dtype


def test_an_unknown_autocast_mode_is_refused_everywhere(tmp_path):
    with pytest.raises(ValueError, match="autocast must be one of"):
        autocast("cpu", "float16")
    with pytest.raises(ValueError, match="'autocast' must be one of"):
        LocalTraining(autocast="float16")
    with pytest.raises(ValueError, match="'autocast' must be one of off, bfloat16, got 'fp16'"):
        RunSettings.from_run_config(app_config(tmp_path, autocast="fp16"))


@pytest.mark.parametrize(("mode", "bfloat16_values"), [("off", False), ("bfloat16", True)])
def test_a_client_trains_under_the_autocast_the_server_sent(mode, bfloat16_values):
    # Prepare: an FSL-SAGE client on 16 random 8x8 images
    split = build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8))
    rng = np.random.default_rng(0)
    data = as_dataset((rng.normal(size=(16, 1, 8, 8)).astype(np.float32), np.arange(16) % 10))
    client = FSLSageClient(split, data, partition_id=0, state=RecordDict())
    training = LocalTraining(batch_size=8, upload_interval=1, autocast=mode)
    shared = {k: v.numpy() for k, v in split.client.state_dict().items()}
    aux = {k: v.numpy() for k, v in split.aux.state_dict().items()}
    # Execute
    reply = client.train(TrainRequest(server_round=1, training=training, warmup=False, shared=shared, aux=aux))
    # Assert: the uploaded activations came out of bfloat16 convolutions, or not
    z = reply.smashed[0]
    assert z.dtype == np.float32 and z.shape[0] == 16
    assert _bfloat16_representable(z) == bfloat16_values


@pytest.mark.parametrize("mode", ["off", "bfloat16"])
def test_the_server_steps_under_the_runs_autocast(monkeypatch, mode):
    # Prepare: record whether autocast is on in each server step
    seen = []
    original = upload_training.server_step

    def spy(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return original(*args, **kwargs)

    monkeypatch.setattr(upload_training, "server_step", spy)
    split = build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8))
    strategy = upload_training.UploadTrainingServer(
        shared_model=split.client,
        client_model=split.client,
        server_model=split.server,
        training=LocalTraining(batch_size=8, autocast=mode),
        cut_shape=split.cut_shape,
        num_classes=10,
    )
    z, y = torch.randn(8, *split.cut_shape), torch.arange(8)
    reply = ParsedReply(node_id=1, partition_id=0, num_examples=8, arrays=None, upload=SmashedUpload([(z, y)]))
    # Execute
    strategy.train_server_on([reply], server_round=1)
    # Assert
    assert seen == [mode == "bfloat16"]


@pytest.mark.e2e  # two in-process runs of 3 rounds
@pytest.mark.parametrize("algorithm", ["fsl-sage", "splitfed-ss"])
def test_a_bfloat16_run_learns(tmp_path, algorithm):
    # Prepare
    config = app_config(tmp_path, algorithm=algorithm, autocast="bfloat16", num_server_rounds=3, align_epochs=5)
    # Execute
    run_in_process(server_app, client_app, config, 3)
    # Assert
    assert read_results(tmp_path / "run" / "results.jsonl")[-1]["accuracy"] > 0.5
