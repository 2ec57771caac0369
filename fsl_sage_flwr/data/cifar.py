"""CIFAR-10 and CIFAR-100 from a local "python version" folder or the Hugging Face hub."""

from __future__ import annotations

from dataclasses import dataclass
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common.logger import log

from fsl_sage_flwr.data.containers import RawSplits
from fsl_sage_flwr.data.loading import DatasetNotFoundError, register_dataset
from fsl_sage_flwr.data.locations import dataset_folders, describe_search, first_folder_holding
from fsl_sage_flwr.data.transforms import scale_to_unit
from fsl_sage_flwr.data.unpickler import load_array_pickle
from fsl_sage_flwr.extras import import_extra


@dataclass(frozen=True)
class _CifarSpec:
    """Where one CIFAR variant lives, locally and on the hub."""

    title: str
    folder: str  # the folder name inside the official archive
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: bytes
    hub_id: str
    hub_label_column: str
    num_classes: int


_CIFAR_SPECS = {
    "cifar10": _CifarSpec(
        "CIFAR-10",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        b"labels",
        "uoft-cs/cifar10",
        "label",
        10,
    ),
    "cifar100": _CifarSpec(
        "CIFAR-100",
        "cifar-100-python",
        ("train",),
        ("test",),
        b"fine_labels",
        "uoft-cs/cifar100",
        "fine_label",
        100,
    ),
}


def _read_cifar_files(directory: Path, names: tuple[str, ...], label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the batches ``names`` of ``directory`` into uint8 images and labels."""
    images, labels = [], []
    for name in names:
        path = directory / name
        batch = load_array_pickle(path)
        if not isinstance(batch, dict) or b"data" not in batch or label_key not in batch:
            raise ValueError(f"{path}: expected a dict with keys b'data' and {label_key!r}")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch[label_key]):
            raise ValueError(f"{path}: data of shape {data.shape} is not (N, 3072) with N labels")
        # Rows hold the red, then green, then blue 32x32 plane: already channel-first.
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _hub_split_to_arrays(split: Any, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    """Turn a Hugging Face split with ``img`` and a label column into uint8 NCHW and labels."""
    table = split.with_format("numpy")
    images = np.asarray(table["img"], dtype=np.uint8)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) images from the hub, got {images.shape}")
    return images.transpose(0, 3, 1, 2), np.asarray(table[label_column], dtype=np.int64)


def _load_cifar_from_hub(spec: _CifarSpec) -> tuple[np.ndarray, ...]:
    """Download (or reuse the cache of) ``spec.hub_id`` through Flower Datasets."""
    # Heavy, optional and only needed without local files: imported here.
    flwr_datasets = import_extra("flwr_datasets", "data", f"loading {spec.hub_id!r} from the Hugging Face hub")
    # One partition: the split is only read whole here and partitioned elsewhere.
    fds = flwr_datasets.FederatedDataset(dataset=spec.hub_id, partitioners={"train": 1})
    train = _hub_split_to_arrays(fds.load_split("train"), spec.hub_label_column)
    test = _hub_split_to_arrays(fds.load_split("test"), spec.hub_label_column)
    return (*train, *test)


def _load_cifar(name: str, data_dir: Path | None) -> RawSplits:
    """Load CIFAR from a local "python version" folder, else from the hub."""
    spec = _CIFAR_SPECS[name]
    searched = dataset_folders(name, data_dir, subfolders=(spec.folder,))
    needed = spec.train_files + spec.test_files
    directory = first_folder_holding(searched, lambda folder: all((folder / f).is_file() for f in needed))

    if directory is not None:
        train_images, train_labels = _read_cifar_files(directory, spec.train_files, spec.label_key)
        test_images, test_labels = _read_cifar_files(directory, spec.test_files, spec.label_key)
        log(INFO, "%s: loaded from %s", name, directory)
    else:
        try:
            train_images, train_labels, test_images, test_labels = _load_cifar_from_hub(spec)
        except Exception as exc:  # offline, package missing, bad cache: all mean not found
            raise DatasetNotFoundError(
                f"{name}: the {spec.title} python-version files ({', '.join(needed)}) are not in "
                f"{describe_search(searched, data_dir)}\nand loading {spec.hub_id!r} from the Hugging Face hub "
                f"failed: {type(exc).__name__}: {exc}\nTo get it: download the "
                f"{spec.title} python version from the CIFAR site, extract it into a folder "
                f"and pass run-config data-dir=<folder>, or run online so Flower Datasets "
                f"can fetch {spec.hub_id!r}."
            ) from exc
        log(INFO, "%s: loaded from the hub (%s)", name, spec.hub_id)

    return RawSplits(
        scale_to_unit(train_images, 255),
        train_labels,
        scale_to_unit(test_images, 255),
        test_labels,
        spec.num_classes,
    )


@register_dataset("cifar10")
def _load_cifar10(data_dir: Path | None) -> RawSplits:
    """CIFAR-10 (50,000 train / 10,000 test colour 32x32 images, 10 classes)."""
    return _load_cifar("cifar10", data_dir)


@register_dataset("cifar100")
def _load_cifar100(data_dir: Path | None) -> RawSplits:
    """CIFAR-100 with its 100 fine labels."""
    return _load_cifar("cifar100", data_dir)
