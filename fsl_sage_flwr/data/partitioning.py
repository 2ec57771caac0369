"""Federated partitioning of sample indices (IID or Dirichlet) with Flower Datasets partitioners."""

from __future__ import annotations

import warnings
from logging import INFO
from typing import Any

import numpy as np
from flwr.common.logger import log

from fsl_sage_flwr.core.seeds import derive_seed
from fsl_sage_flwr.extras import import_extra

# How often the Dirichlet partitioning is redrawn (each draw already retries 11 times
# inside Flower Datasets) before a too-small ``alpha`` is reported as an error.
_DIRICHLET_ATTEMPTS = 20

PARTITIONINGS = ("iid", "dirichlet")


def partition_indices(
    labels: np.ndarray,
    num_partitions: int,
    *,
    partitioning: str = "iid",
    alpha: float = 1.0,
    seed: int = 0,
) -> list[np.ndarray]:
    """Split sample indices among clients with Flower Datasets partitioners.

    ``iid`` shuffles the indices with ``seed`` and cuts them into ``num_partitions``
    contiguous shards of near-equal size. ``dirichlet`` draws each class's share per
    client from ``Dirichlet(alpha)`` (small ``alpha``: few classes per client), requiring
    ``min(10, n // (2 * num_partitions))`` samples per client; draws that miss this are
    repeated with seeds derived from ``seed``.

    Parameters
    ----------
    labels : np.ndarray
        Label of every sample, shape ``(n,)``.
    num_partitions : int
        Number of clients, between 1 and ``n``.
    partitioning : str
        ``"iid"`` or ``"dirichlet"``.
    alpha : float
        Dirichlet concentration, > 0; unused by ``iid``.
    seed : int
        Seed; the same arguments always give the same partitions.

    Returns
    -------
    list of np.ndarray
        Sorted ``int64`` indices into ``labels``, one array per partition; the arrays are
        disjoint and together cover every sample.

    Raises
    ------
    ValueError
        On bad arguments, or if no Dirichlet draw gives every client enough samples.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if not 1 <= num_partitions <= len(labels):
        raise ValueError(f"num_partitions must be in [1, {len(labels)}], got {num_partitions}")
    if partitioning == "iid":
        return _iid_partition(labels, num_partitions, seed)
    if partitioning == "dirichlet":
        if not (np.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be a positive number, got {alpha}")
        return _dirichlet_partition(labels, num_partitions, alpha, seed)
    raise ValueError(f"unknown partitioning {partitioning!r}; choose one of {', '.join(PARTITIONINGS)}")


def _label_table(labels: np.ndarray, order: np.ndarray) -> Any:
    """Build a Hugging Face table of labels and sample indices, rows in ``order``.

    Only labels go in: the partitioners need nothing else, and copying images into
    Arrow would be slow.
    """
    datasets = import_extra("datasets", "data", "partitioning with Flower Datasets")
    return datasets.Dataset.from_dict({"label": labels[order], "index": order})


def _partition_index_arrays(partitioner: Any, num_partitions: int) -> list[np.ndarray]:
    """Read the ``index`` column of every partition, sorted."""
    return [
        np.sort(np.asarray(partitioner.load_partition(pid)["index"], dtype=np.int64)) for pid in range(num_partitions)
    ]


def _iid_partition(labels: np.ndarray, num_partitions: int, seed: int) -> list[np.ndarray]:
    """IID shards of a seeded shuffle (the partitioner itself cuts rows contiguously)."""
    partitioners = import_extra("flwr_datasets.partitioner", "data", "partitioning='iid'")
    order = np.random.default_rng(seed).permutation(len(labels))
    partitioner = partitioners.IidPartitioner(num_partitions)
    partitioner.dataset = _label_table(labels, order)
    return _partition_index_arrays(partitioner, num_partitions)


def _dirichlet_partition(labels: np.ndarray, num_partitions: int, alpha: float, seed: int) -> list[np.ndarray]:
    """Dirichlet label-skewed partitions, redrawn until every client has enough samples."""
    partitioners = import_extra("flwr_datasets.partitioner", "data", "partitioning='dirichlet'")
    table = _label_table(labels, np.arange(len(labels)))
    # 10 is Flower's default; small sets (digits over many clients) need less.
    min_size = min(10, len(labels) // (2 * num_partitions))
    for attempt in range(_DIRICHLET_ATTEMPTS):
        # The first attempt uses the seed as given, so it matches a plain partitioner; the
        # redraws keep the seed-sequence scheme they have always used, so partitions stay put.
        attempt_seed = seed if attempt == 0 else derive_seed(seed, attempt, scheme="seed-sequence")
        partitioner = partitioners.DirichletPartitioner(
            num_partitions,
            partition_by="label",
            alpha=alpha,
            seed=attempt_seed,
            min_partition_size=min_size,
        )
        partitioner.dataset = table
        try:
            with warnings.catch_warnings():
                # Flower warns on each of its internal redraws; the outcome is logged below.
                warnings.filterwarnings("ignore", message="The specified min_partition_size")
                return _partition_index_arrays(partitioner, num_partitions)
        except ValueError:
            # Arguments were checked above, so this is Flower giving up on min_size.
            log(
                INFO,
                "Dirichlet draw %d (alpha=%g) left a client under %d samples",
                attempt,
                alpha,
                min_size,
            )
    raise ValueError(
        f"none of {_DIRICHLET_ATTEMPTS} Dirichlet(alpha={alpha}) draws gave all "
        f"{num_partitions} partitions at least {min_size} samples; "
        "use a larger alpha or fewer partitions"
    )
