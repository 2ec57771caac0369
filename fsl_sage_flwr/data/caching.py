"""In-process caches of loaded datasets and partitions, and one client's share of them."""

from __future__ import annotations

import functools

import numpy as np

from fsl_sage_flwr.data.containers import ArrayDataset, DatasetSplits
from fsl_sage_flwr.data.loading import load_dataset
from fsl_sage_flwr.data.partitioning import partition_indices


def load_partition(
    name: str,
    partition_id: int,
    num_partitions: int,
    *,
    partitioning: str,
    alpha: float,
    seed: int,
    data_dir: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    train_subset: int | None = None,
) -> ArrayDataset:
    """Return one client's share of the training split.

    The dataset and its partitioning are cached in-process, so a Ray actor that plays
    several clients or rounds loads them once.

    Parameters
    ----------
    name, data_dir, input_shape, train_subset, seed
        As in :func:`load_dataset` (``seed`` also seeds the partitioning).
    partition_id : int
        This client's partition, in ``[0, num_partitions)``.
    num_partitions, partitioning, alpha
        As in :func:`partition_indices`.

    Returns
    -------
    ArrayDataset
        A copy of the client's training samples.

    Raises
    ------
    ValueError
        If ``partition_id`` is out of range, or as :func:`load_dataset` and
        :func:`partition_indices` do.
    """
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition_id must be in [0, {num_partitions}), got {partition_id}")
    key = _dataset_key(name, data_dir, input_shape, train_subset, seed)
    train = _memoised_dataset(*key).train
    parts = _memoised_partitions(key, num_partitions, partitioning, float(alpha))
    return train.subset(parts[partition_id])


def load_dataset_cached(
    name: str,
    *,
    data_dir: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    train_subset: int | None = None,
    seed: int = 0,
) -> DatasetSplits:
    """Return :func:`load_dataset`'s result, memoised in-process (clients ask every round).

    Equivalent arguments (a list or a tuple ``input_shape``, ``data_dir`` ``None`` or
    ``""``) share one cache entry, which :func:`load_partition` uses too. The result is
    shared: do not modify its arrays in place.

    Parameters
    ----------
    name, data_dir, input_shape, train_subset, seed
        As in :func:`load_dataset`.

    Returns
    -------
    DatasetSplits
        The cached splits.
    """
    return _memoised_dataset(*_dataset_key(name, data_dir, input_shape, train_subset, seed))


_DatasetKey = tuple[str, str | None, tuple[int, ...] | None, int | None, int]


def _dataset_key(
    name: str,
    data_dir: str | None,
    input_shape: tuple[int, int, int] | None,
    train_subset: int | None,
    seed: int,
) -> _DatasetKey:
    """Canonical, hashable form of :func:`load_dataset`'s arguments (configs give lists)."""
    shape = tuple(int(d) for d in input_shape) if input_shape is not None else None
    return name, str(data_dir) if data_dir else None, shape, train_subset, int(seed)


@functools.lru_cache(maxsize=2)  # a full CIFAR copy is ~600 MB: keep few
def _memoised_dataset(
    name: str,
    data_dir: str | None,
    input_shape: tuple[int, int, int] | None,
    train_subset: int | None,
    seed: int,
) -> DatasetSplits:
    """Call :func:`load_dataset` once per canonical key."""
    return load_dataset(name, data_dir=data_dir, input_shape=input_shape, train_subset=train_subset, seed=seed)


@functools.lru_cache(maxsize=8)
def _memoised_partitions(
    key: _DatasetKey, num_partitions: int, partitioning: str, alpha: float
) -> tuple[np.ndarray, ...]:
    """Call :func:`partition_indices` once per dataset key and partitioning."""
    labels = _memoised_dataset(*key).train.labels
    seed = key[-1]
    return tuple(partition_indices(labels, num_partitions, partitioning=partitioning, alpha=alpha, seed=seed))
