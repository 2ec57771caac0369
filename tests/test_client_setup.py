"""A node's wrong setup fails before it trains, in one line naming the part and the shapes or values."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, RecordDict
from torch import nn

from fsl_sage_flwr import SplitSpec
from fsl_sage_flwr.app.client_app import build_client
from fsl_sage_flwr.core.setup_checks import SetupError
from simulations.testing import app_config


def _node(tmp_path, x, y, **node_config) -> Context:
    folder = tmp_path / "node"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "train.npz", x=x, y=y)
    config = {"partition-id": 0, "data-dir": str(folder), **node_config}
    return Context(run_id=1, node_id=5, node_config=config, state=RecordDict(), run_config=app_config(tmp_path))


def _digits_like(n: int = 9) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 1, 8, 8)).astype(np.float32)


def test_app_client_with_labels_out_of_range_fails_naming_the_label(tmp_path):
    # Prepare: digits has 10 classes, this node's data holds a 12
    context = _node(tmp_path, _digits_like(), np.array([0, 1, 2, 12, 4, 5, 6, 7, 8]))
    # Execute / Assert
    with pytest.raises(SetupError, match=r"^setup error \(labels\): labels out of range: found 12, num_classes 10$"):
        build_client(context)


def test_app_client_with_inputs_its_model_cannot_take_fails_naming_the_shape(tmp_path):
    # Prepare: 8 x 8 images without their channel axis
    context = _node(tmp_path, _digits_like()[:, 0], np.arange(9) % 10)
    # Execute
    with pytest.raises(SetupError) as err:
        build_client(context)
    # Assert: one line, the part, the shape, torch's reason, and the hint
    text = str(err.value)
    assert text.startswith("setup error (shapes): client_model cannot take inputs of shape (8, 8): ")
    assert text.endswith("do the inputs lack their channel axis?)") and "\n" not in text


def test_app_client_without_a_partition_id_fails_naming_the_key(tmp_path):
    # Prepare
    context = _node(tmp_path, _digits_like(), np.arange(9) % 10)
    del context.node_config["partition-id"]
    # Execute / Assert
    with pytest.raises(SetupError, match=r"^setup error \(identity\): node config has no 'partition-id'"):
        build_client(context)


def _spec(**kwargs) -> SplitSpec:
    return SplitSpec(
        client_model=lambda: nn.Sequential(nn.Linear(64, 16), nn.ReLU()),
        server_model=lambda: nn.Linear(16, 10),
        aux_model=lambda: nn.Linear(16, 10),
        cut_shape=(16,),
        num_classes=10,
        **kwargs,
    )


def _context() -> Context:
    return Context(run_id=1, node_id=5, node_config={"partition-id": 0}, state=RecordDict(), run_config={})


def test_spec_client_with_labels_out_of_range_fails_before_training():
    # Prepare
    data = (np.zeros((6, 64), np.float32), np.array([0, 1, -1, 3, 4, 5]))
    # Execute / Assert
    with pytest.raises(SetupError, match=r"labels out of range: found -1, num_classes 10$"):
        _spec().client(data, _context())


def test_spec_client_with_inputs_of_another_shape_fails_naming_the_part():
    # Prepare: 63 features for a client model taking 64
    data = (np.zeros((6, 63), np.float32), np.arange(6))
    # Execute / Assert: the client model's misfit, or the declared input shape's
    with pytest.raises(SetupError, match=r"client_model cannot take inputs of shape \(63,\): mat1 and mat2"):
        _spec().client(data, _context())
    with pytest.raises(SetupError, match=r"inputs of shape \(63,\) per sample, the split takes \(64,\)$"):
        _spec(input_shape=(64,)).client(data, _context())


def test_spec_client_without_a_partition_id_is_an_identity_fault():
    context = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(SetupError) as err:
        _spec().client((np.zeros((6, 64), np.float32), np.arange(6)), context)
    assert err.value.kind == "identity"
