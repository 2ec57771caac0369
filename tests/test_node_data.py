"""Node-local data: what a SuperNode trains on, from its node config."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from fsl_sage_flwr.app.client_app import build_client
from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.app.node_data import load_node_data
from fsl_sage_flwr.data import load_partition
from simulations.testing import app_config, write_fake_mnist


@pytest.fixture
def settings(tmp_path):
    return RunSettings.from_run_config(app_config(tmp_path))


def _write_npz(folder, x, y):
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "train.npz", x=x, y=y)
    return folder


def test_partition_of_the_run_dataset_without_data_dir(settings):
    # Execute
    data = load_node_data({"partition-id": 1, "num-partitions": 3}, settings)
    # Assert: the same samples as the partitioner gives
    expected = load_partition("digits", 1, 3, partitioning="dirichlet", alpha=1.0, seed=0, input_shape=None)
    np.testing.assert_array_equal(data.labels, expected.labels)
    np.testing.assert_array_equal(data.images, expected.images)


def test_npz_in_data_dir_is_the_node_data(tmp_path, settings):
    # Prepare: float64 samples and int32 labels, shaped like digits
    x = np.random.default_rng(0).normal(size=(7, 1, 8, 8))
    y = np.arange(7, dtype=np.int32) % 10
    folder = _write_npz(tmp_path / "node", x, y)
    # Execute: num-partitions is not needed
    data = load_node_data({"partition-id": 4, "data-dir": str(folder)}, settings)
    # Assert
    assert data.images.dtype == np.float32 and data.labels.dtype == np.int64
    np.testing.assert_allclose(data.images, x.astype(np.float32))
    np.testing.assert_array_equal(data.labels, y)


def test_npz_with_flat_samples_is_accepted(tmp_path, settings):
    folder = _write_npz(tmp_path / "node", np.zeros((3, 5), np.float32), np.array([0, 1, 2]))
    assert load_node_data({"partition-id": 0, "data-dir": str(folder)}, settings).images.shape == (3, 5)


def test_dataset_in_data_dir_gives_its_whole_train_split(tmp_path):
    # Prepare: an MNIST folder with 20 training images, run dataset mnist
    write_fake_mnist(tmp_path / "mnist-node")
    settings = RunSettings.from_run_config(app_config(tmp_path, dataset="mnist"))
    # Execute
    data = load_node_data({"partition-id": 0, "data-dir": str(tmp_path / "mnist-node")}, settings)
    # Assert: all of it, no partitioning
    assert data.images.shape == (20, 1, 28, 28)
    assert sorted(data.labels.tolist()) == sorted((np.arange(20) % 10).tolist())


@pytest.mark.parametrize(
    ("node_config", "message"),
    [
        ({"num-partitions": 2}, "lacks 'partition-id'"),
        ({"partition-id": 0}, "lacks 'num-partitions'.*data-dir"),
        ({"partition-id": "zero", "num-partitions": 2}, "'partition-id' must be an integer"),
    ],
)
def test_missing_or_bad_keys_are_named(settings, node_config, message):
    with pytest.raises(ValueError, match=message):
        load_node_data(node_config, settings)


def test_missing_data_dir_names_key_and_path(tmp_path, settings):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"data-dir: '{missing}'"):
        load_node_data({"partition-id": 0, "data-dir": str(missing)}, settings)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((2, 1, 8, 8), np.float32)}, "lacks array.*y"),
        ({"x": np.zeros((2, 1, 8, 8), np.uint8), "y": np.array([0, 1])}, "x must be float32"),
        ({"x": np.zeros((2, 1, 8, 8), np.float32), "y": np.array([0.0, 1.0])}, "y must be integer"),
        ({"x": np.zeros((2, 1, 8, 8), np.float32), "y": np.array([0, 1, 2])}, r"x must be \(N, ...\)"),
        ({"x": np.zeros((2, 1, 8, 8), np.float32), "y": np.array([0, -1])}, "must not be negative"),
    ],
)
def test_malformed_npz_is_reported_with_its_path(tmp_path, settings, arrays, message):
    folder = tmp_path / "node"
    folder.mkdir()
    np.savez(folder / "train.npz", **arrays)
    with pytest.raises(ValueError, match=message) as err:
        load_node_data({"partition-id": 0, "data-dir": str(folder)}, settings)
    assert str(folder / "train.npz") in str(err.value)


def test_client_app_trains_on_node_local_npz(tmp_path):
    # Prepare: a node with 9 own samples
    x = np.random.default_rng(1).normal(size=(9, 1, 8, 8)).astype(np.float32)
    folder = _write_npz(tmp_path / "node", x, np.arange(9) % 10)
    context = Context(
        run_id=1,
        node_id=5,
        node_config={"partition-id": 2, "data-dir": str(folder)},
        state=RecordDict(),
        run_config=app_config(tmp_path),
    )
    # Execute
    client, _ = build_client(context)
    # Assert
    assert client.partition_id == 2
    assert len(client.y) == 9
