"""Tests for fsl_sage_flwr.data's sources: IDX files, CIFAR folders and hub, array pickles."""

from __future__ import annotations

import os
import pickle
import shlex
from pathlib import Path
from typing import ClassVar

import datasets
import flwr_datasets
import numpy as np
import pytest
from PIL import Image

from fsl_sage_flwr.data import (
    DatasetNotFoundError,
    dataset_folders,
    find_idx_folder,
    load_array_pickle,
    load_dataset,
    locations,
    read_idx,
)
from simulations.paths import SHARED_DATA
from simulations.testing import write_fake_mnist, write_idx

# The project's shared data folder sits beside the repository (also in CI's copy).


def _write_cifar_batch(path: Path, images: np.ndarray, labels: list[int], label_key: bytes) -> None:
    """Write a batch file like CIFAR's python version: a pickled dict with bytes keys."""
    batch = {b"data": images.reshape(len(images), -1), label_key: labels, b"batch_label": b"x"}
    with path.open("wb") as f:
        pickle.dump(batch, f)


def _fake_cifar_folder(root: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Write a tiny CIFAR layout under ``root``; return its (train, test) uint8 NCHW images."""
    rng = np.random.default_rng(1)
    if name == "cifar10":
        folder, test_name, key = root / "cifar-10-batches-py", "test_batch", b"labels"
        train_names = [f"data_batch_{i}" for i in range(1, 6)]
    else:
        folder, test_name, key = root / "cifar-100-python", "test", b"fine_labels"
        train_names = ["train"]
    folder.mkdir(parents=True)
    train_chunks = []
    for file_name in train_names:
        chunk = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
        _write_cifar_batch(folder / file_name, chunk, [0, 1, 2, 3], key)
        train_chunks.append(chunk)
    test = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    _write_cifar_batch(folder / test_name, test, [3, 2, 1], key)
    return np.concatenate(train_chunks), test


class _FakeFederatedDataset:
    """Stands in for flwr_datasets.FederatedDataset: serves tiny in-memory splits."""

    calls: ClassVar[list[str]] = []

    def __init__(self, *, dataset: str, partitioners: dict, **kwargs) -> None:
        self.dataset = dataset
        _FakeFederatedDataset.calls.append(dataset)

    def load_split(self, split: str) -> datasets.Dataset:
        n = 6 if split == "train" else 2
        label_column = "fine_label" if self.dataset.endswith("100") else "label"
        images = [Image.fromarray(np.full((32, 32, 3), 10 * i, dtype=np.uint8)) for i in range(n)]
        return datasets.Dataset.from_dict({"img": images, label_column: list(range(n))})


# --------------------------------------------------------------------------- IDX / MNIST


@pytest.mark.parametrize("file_name", ["tiny-idx3-ubyte", "tiny-idx3-ubyte.gz"])
def test_read_idx_round_trip(tmp_path, file_name):
    # Prepare
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    write_idx(tmp_path / file_name, array)

    # Execute
    loaded = read_idx(tmp_path / file_name)

    # Assert
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, array)


def test_read_idx_reads_big_endian_ints(tmp_path):
    # Prepare: type byte 0x0C = int32, stored big-endian.
    values = np.array([1, -2, 70000], dtype=">i4")
    (tmp_path / "ints").write_bytes(bytes([0, 0, 0x0C, 1]) + np.array([3], ">u4").tobytes() + values.tobytes())

    # Execute / Assert
    np.testing.assert_array_equal(read_idx(tmp_path / "ints"), [1, -2, 70000])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (bytes([1, 2, 8, 1]) + np.array([1], ">u4").tobytes() + b"\x00", "magic"),
        (bytes([0, 0, 8, 2]) + np.array([4, 4], ">u4").tobytes() + b"\x00" * 3, "payload"),
        (bytes([0, 0, 8, 3]) + b"\x00", "header"),
    ],
    ids=["bad-magic", "truncated-payload", "truncated-header"],
)
def test_read_idx_rejects_malformed_file_naming_it(tmp_path, content, message):
    # Prepare
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(content)

    # Execute / Assert
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_mnist_loads_from_a_folder_named_after_it(tmp_path):
    # Prepare: data_dir/mnist holds a mix of .gz and plain IDX files.
    write_fake_mnist(tmp_path / "mnist")

    # Execute
    splits = load_dataset("mnist", data_dir=str(tmp_path), input_shape=(3, 32, 32))

    # Assert: 28x28 padded by 2 px on every side.
    assert splits.train.images.shape == (20, 3, 32, 32)
    assert splits.test.images.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(splits.train.labels, np.arange(20) % 10)
    border = splits.train.images.copy()
    border[:, :, 2:30, 2:30] = 0
    assert not border.any()
    assert splits.train.images[:, :, 2:30, 2:30].std() > 0.5


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_missing_idx_dataset_lists_every_place_and_how_to_get_it(tmp_path, monkeypatch, name):
    # Prepare: an empty data dir and an empty stand-in for /usr/share/datasets.
    system_root = tmp_path / "system"
    monkeypatch.setattr(locations, "SYSTEM_DATASET_ROOT", system_root)
    data_dir = tmp_path / "empty"
    data_dir.mkdir()

    # Execute
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, data_dir=str(data_dir))

    # Assert
    message = str(info.value)
    for place in (data_dir, data_dir / name, system_root / name):
        assert f"- {place}\n" in message
    assert "train-images-idx3-ubyte" in message and "data-dir" in message
    assert isinstance(info.value, FileNotFoundError)
    if name == "fashion-mnist":
        assert "dataset-fashion-mnist" in message


def test_dataset_folders_are_the_data_dir_its_subfolders_then_the_system_root(tmp_path, monkeypatch):
    # Prepare
    system_root = tmp_path / "system"
    monkeypatch.setattr(locations, "SYSTEM_DATASET_ROOT", system_root)
    data_dir = tmp_path / "data"

    # Execute
    folders = dataset_folders("cifar10", data_dir, subfolders=("cifar-10-batches-py",))
    without_data_dir = dataset_folders("mnist", None)

    # Assert
    assert folders == [
        data_dir,
        data_dir / "cifar-10-batches-py",
        data_dir / "cifar10",
        system_root / "cifar-10-batches-py",
        system_root / "cifar10",
    ]
    assert without_data_dir == [system_root / "mnist"]


def test_idx_dataset_found_in_the_system_root_without_a_data_dir(tmp_path, monkeypatch):
    # Prepare: no data-dir; the files sit where a Debian dataset package puts them.
    system_root = tmp_path / "system"
    monkeypatch.setattr(locations, "SYSTEM_DATASET_ROOT", system_root)
    write_fake_mnist(system_root / "fashion-mnist")

    # Execute
    folder = find_idx_folder("fashion-mnist", None)
    splits = load_dataset("fashion-mnist")

    # Assert
    assert folder == system_root / "fashion-mnist"
    assert splits.train.images.shape == (20, 1, 28, 28)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_real_idx_files_when_present(name):
    # Prepare
    folder = SHARED_DATA / name
    if not folder.is_dir():
        pytest.skip(f"no copy of {name} at {folder}")

    # Execute
    splits = load_dataset(name, data_dir=str(folder))

    # Assert
    assert splits.train.images.shape == (60_000, 1, 28, 28)
    assert splits.test.images.shape == (10_000, 1, 28, 28)
    np.testing.assert_array_equal(np.unique(splits.train.labels), np.arange(10))
    assert abs(float(splits.train.images.mean())) < 1e-3


# --------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_python_version_layout(tmp_path, name):
    # Prepare
    train_raw, test_raw = _fake_cifar_folder(tmp_path, name)
    train01, test01 = train_raw / 255.0, test_raw / 255.0
    mean = train01.mean(axis=(0, 2, 3), keepdims=True)
    std = train01.std(axis=(0, 2, 3), keepdims=True)

    # Execute
    splits = load_dataset(name, data_dir=str(tmp_path))

    # Assert: channel-first pixels, normalised with the train statistics in both splits.
    assert splits.input_shape == (3, 32, 32)
    assert splits.num_classes == (10 if name == "cifar10" else 100)
    np.testing.assert_allclose(splits.train.images, (train01 - mean) / std, atol=1e-4)
    np.testing.assert_allclose(splits.test.images, (test01 - mean) / std, atol=1e-4)
    np.testing.assert_array_equal(splits.test.labels, [3, 2, 1])


@pytest.mark.parametrize(("name", "hub_id"), [("cifar10", "uoft-cs/cifar10"), ("cifar100", "uoft-cs/cifar100")])
def test_cifar_falls_back_to_the_hub(tmp_path, monkeypatch, name, hub_id):
    # Prepare: no local files; the hub is a fake, so no network is touched.
    monkeypatch.setattr(flwr_datasets, "FederatedDataset", _FakeFederatedDataset)
    monkeypatch.setattr(_FakeFederatedDataset, "calls", [])

    # Execute
    splits = load_dataset(name, data_dir=str(tmp_path))

    # Assert: HWC hub images became CHW; labels came from the right column.
    assert _FakeFederatedDataset.calls == [hub_id]
    assert splits.train.images.shape == (6, 3, 32, 32)
    assert splits.test.images.shape == (2, 3, 32, 32)
    np.testing.assert_array_equal(splits.train.labels, np.arange(6))
    assert np.all(np.diff(splits.train.images[:, 0, 0, 0]) > 0)


def test_cifar_hub_failure_says_where_it_looked(tmp_path, monkeypatch):
    # Prepare: a hub that is unreachable.
    def offline(**kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(flwr_datasets, "FederatedDataset", offline)

    # Execute
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("cifar10", data_dir=str(tmp_path))

    # Assert
    message = str(info.value)
    for place in (tmp_path, tmp_path / "cifar-10-batches-py"):
        assert f"- {place}\n" in message
    assert "uoft-cs/cifar10" in message and "no network" in message
    assert "data-dir" in message and "python version" in message


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_array_pickle_loads_numpy_arrays(tmp_path, protocol):
    # Prepare
    content = {b"data": np.arange(12, dtype=np.uint8).reshape(3, 4), b"labels": [1, 2, 3]}
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps(content, protocol=protocol))

    # Execute
    loaded = load_array_pickle(path)

    # Assert
    np.testing.assert_array_equal(loaded[b"data"], content[b"data"])
    assert loaded[b"labels"] == [1, 2, 3]


def test_array_pickle_reads_python2_style_batches(tmp_path):
    # Prepare: the opcodes Python 2 wrote for {"data": uint8 array [[1, 2, 3]], "labels": [7]}
    # (byte strings as SHORT_BINSTRING, the array via numpy.core), as in the CIFAR files.
    path = tmp_path / "py2_batch"
    path.write_bytes(
        b"\x80\x02}q\x00(U\x04dataq\x01cnumpy.core.multiarray\n_reconstruct\nq\x02"
        b"cnumpy\nndarray\nq\x03K\x00\x85U\x01b\x87Rq\x04(K\x01K\x01K\x03\x86"
        b"cnumpy\ndtype\nq\x05U\x02u1K\x00K\x01\x87Rq\x06(K\x03U\x01|NNN"
        b"J\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x03\x01\x02\x03tb"
        b"U\x06labelsq\x07]q\x08K\x07au."
    )

    # Execute
    loaded = load_array_pickle(path)

    # Assert: keys come back as bytes, like b"data" in the real batches.
    np.testing.assert_array_equal(loaded[b"data"], np.array([[1, 2, 3]], dtype=np.uint8))
    assert loaded[b"labels"] == [7]


class _RunsAShellCommand:
    """Pickles to a call of os.system, like a tampered dataset file would."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_array_pickle_rejects_os_system_without_running_it(tmp_path):
    # Prepare: a CIFAR batch whose pickle would create a marker file when loaded.
    marker = tmp_path / "ran"
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    evil = {b"data": _RunsAShellCommand(f"touch {shlex.quote(str(marker))}"), b"labels": []}
    for file_name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / file_name).write_bytes(pickle.dumps(evil))

    # Execute / Assert: refused by the direct loader and by load_dataset.
    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_array_pickle(folder / "test_batch")
    with pytest.raises(pickle.UnpicklingError, match="data_batch_1"):
        load_dataset("cifar10", data_dir=str(tmp_path))
    assert not marker.exists()
