"""The training data of one node, from its node config.

A SuperNode is started with ``--node-config``. Two ways to give it data:

- ``partition-id=i num-partitions=n``: the node trains on partition ``i`` of ``n``
  of the run's ``dataset`` (as Flower's simulation does).
- ``partition-id=i data-dir="/folder"``: the node trains on its own data in that
  folder: ``<folder>/train.npz`` with arrays ``x`` (float, one sample per row, any
  per-sample shape the model takes, preprocessed as the run's test set is) and
  ``y`` (integer labels) when that file exists; otherwise the run's ``dataset``
  read from the folder, whose whole train split is this node's data.

``partition-id`` is always required: it is the node's stable id (the server orders
replies and derives seeds by it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.core.models import required_input_shape
from fsl_sage_flwr.data import ArrayDataset, adapt_images, load_dataset_cached, load_partition
from fsl_sage_flwr.lm_specs import TEXT_DATASETS, bible_partition

#: Node-config keys.
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"
DATA_DIR = "data-dir"

#: File of a node's own samples inside its ``data-dir``.
NPZ_FILE = "train.npz"


def load_node_data(node_config: Mapping[str, Any], settings: RunSettings) -> ArrayDataset:
    """Return the training samples of the node with this ``node_config``.

    Parameters
    ----------
    node_config : Mapping[str, Any]
        The SuperNode's node config (``context.node_config``).
    settings : RunSettings
        The run's settings (dataset, model, partitioning, seed, ...).

    Returns
    -------
    ArrayDataset
        ``float32`` samples and ``int64`` labels.

    Raises
    ------
    ValueError
        Naming the key, when ``partition-id`` is missing or not an integer, when
        ``num-partitions`` is needed and missing, or when ``train.npz`` is malformed.
    FileNotFoundError
        Naming the key and path, when ``data-dir`` is not a folder.
    """
    _node_int(node_config, PARTITION_ID)
    if settings.dataset in TEXT_DATASETS:
        return bible_partition(
            _node_int(node_config, PARTITION_ID),
            _node_int(node_config, NUM_PARTITIONS),
            train_subset=settings.train_subset,
            seed=settings.training.seed,
        )
    input_shape = required_input_shape(settings.model)
    data_dir = str(node_config.get(DATA_DIR, "") or "")
    if data_dir:
        return _load_local(Path(data_dir).expanduser(), settings, input_shape)
    return load_partition(
        settings.dataset,
        _node_int(node_config, PARTITION_ID),
        _node_int(node_config, NUM_PARTITIONS, f" (or give the node its own data with {DATA_DIR})"),
        partitioning=settings.partitioning,
        alpha=settings.alpha,
        data_dir=settings.data_dir or None,
        input_shape=input_shape,
        train_subset=settings.train_subset or None,
        seed=settings.training.seed,
    )


def _load_local(folder: Path, settings: RunSettings, input_shape: tuple[int, int, int] | None) -> ArrayDataset:
    if not folder.is_dir():
        raise FileNotFoundError(f"node config {DATA_DIR}: '{folder}' is not a folder")
    npz = folder / NPZ_FILE
    if npz.is_file():
        return _read_npz(npz, input_shape)
    return load_dataset_cached(
        settings.dataset, data_dir=str(folder), input_shape=input_shape, seed=settings.training.seed
    ).train


def _read_npz(path: Path, input_shape: tuple[int, int, int] | None) -> ArrayDataset:
    where = f"node config {DATA_DIR}: {path}"
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"x", "y"} - set(archive.files)
            if missing:
                raise ValueError(
                    f"{where} lacks array(s) {', '.join(sorted(missing))} (has: {', '.join(archive.files)})"
                )
            x, y = archive["x"], archive["y"]
    except (OSError, EOFError) as err:
        raise ValueError(f"{where} is not a readable .npz file: {err}") from err
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{where}: x must be float32 samples, got dtype {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{where}: y must be integer labels, got dtype {y.dtype}")
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"{where}: x must be (N, ...) and y (N,) with N > 0, got {x.shape} and {y.shape}")
    if y.min() < 0:
        raise ValueError(f"{where}: labels must not be negative, got {int(y.min())}")
    x = x.astype(np.float32, copy=False)
    if input_shape is not None and x.ndim == 4:
        x = adapt_images(x, input_shape)
    return ArrayDataset(np.ascontiguousarray(x), y.astype(np.int64, copy=False))


def _node_int(node_config: Mapping[str, Any], key: str, hint: str = "") -> int:
    if key not in node_config:
        raise ValueError(f"node config lacks '{key}'{hint}; start the SuperNode with --node-config \"{key}=...\"")
    value = node_config[key]
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"node config '{key}' must be an integer, got {value!r}")
    return int(value)
