"""Tests for fsl_sage_flwr.data's partitioning and its in-process caches."""

from __future__ import annotations

import warnings

import datasets
import numpy as np
import pytest
from flwr_datasets.partitioner import DirichletPartitioner, IidPartitioner

from fsl_sage_flwr.core.seeds import derive_seed
from fsl_sage_flwr.data import (
    ArrayDataset,
    load_dataset,
    load_dataset_cached,
    load_partition,
    partition_indices,
)

DIGITS_TRAIN, DIGITS_TEST = 1437, 360


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# --------------------------------------------------------------------------- partitioning


def _assert_disjoint_cover(parts: list[np.ndarray], n: int) -> None:
    merged = np.concatenate(parts)
    assert len(merged) == n and len(np.unique(merged)) == n


@pytest.mark.parametrize(("partitioning", "alpha"), [("iid", 1.0), ("dirichlet", 0.5)])
def test_partitions_are_deterministic_disjoint_and_cover(digits, partitioning, alpha):
    # Prepare
    labels = digits.train.labels

    # Execute
    first = partition_indices(labels, 7, partitioning=partitioning, alpha=alpha, seed=5)
    again = partition_indices(labels, 7, partitioning=partitioning, alpha=alpha, seed=5)
    other = partition_indices(labels, 7, partitioning=partitioning, alpha=alpha, seed=6)

    # Assert
    assert len(first) == 7
    _assert_disjoint_cover(first, len(labels))
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in first)


def test_iid_partitions_have_near_equal_sizes_and_mixed_labels(digits):
    # Execute
    parts = partition_indices(digits.train.labels, 10, seed=0)

    # Assert: sizes differ by at most one; shuffled first, so every client sees every class.
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert all(len(np.unique(digits.train.labels[p])) == 10 for p in parts)


def _mean_label_skew(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean total-variation distance between each partition's and the global label mix."""
    overall = np.bincount(labels, minlength=10) / len(labels)
    return float(np.mean([0.5 * np.abs(np.bincount(labels[p], minlength=10) / len(p) - overall).sum() for p in parts]))


def test_small_alpha_dirichlet_skews_labels_more_than_iid(digits):
    # Prepare
    labels = digits.train.labels

    # Execute
    iid = partition_indices(labels, 5, partitioning="iid", seed=0)
    skewed = partition_indices(labels, 5, partitioning="dirichlet", alpha=0.1, seed=0)

    # Assert
    assert _mean_label_skew(labels, iid) < 0.15
    assert _mean_label_skew(labels, skewed) > 0.4


def test_tiny_alpha_on_digits_still_gives_every_client_data(digits):
    # Execute: alpha 0.01 over 10 clients often fails Flower's first draws.
    parts = partition_indices(digits.train.labels, 10, partitioning="dirichlet", alpha=0.01, seed=0)

    # Assert
    _assert_disjoint_cover(parts, DIGITS_TRAIN)
    assert min(len(p) for p in parts) >= 10


@pytest.mark.parametrize(
    ("num_partitions", "partitioning", "alpha", "message"),
    [
        (0, "iid", 1.0, "num_partitions"),
        (DIGITS_TRAIN + 1, "iid", 1.0, "num_partitions"),
        (4, "pathological", 1.0, "unknown partitioning.*iid, dirichlet"),
        (4, "dirichlet", 0.0, "alpha"),
        (4, "dirichlet", -1.0, "alpha"),
    ],
)
def test_partition_indices_rejects_bad_arguments(digits, num_partitions, partitioning, alpha, message):
    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        partition_indices(digits.train.labels, num_partitions, partitioning=partitioning, alpha=alpha)


def test_load_partition_returns_the_partition_samples(digits):
    # Prepare
    expected = partition_indices(digits.train.labels, 4, partitioning="dirichlet", alpha=1.0, seed=2)

    # Execute
    clients = [load_partition("digits", pid, 4, partitioning="dirichlet", alpha=1.0, seed=2) for pid in range(4)]

    # Assert
    assert [len(c) for c in clients] == [len(p) for p in expected]
    assert sum(len(c) for c in clients) == DIGITS_TRAIN
    for client, indices in zip(clients, expected, strict=True):
        assert isinstance(client, ArrayDataset)
        np.testing.assert_array_equal(client.images, digits.train.images[indices])
        np.testing.assert_array_equal(client.labels, digits.train.labels[indices])


def test_load_partition_with_subset_and_shape(digits):
    # Execute
    client = load_partition(
        "digits",
        1,
        5,
        partitioning="iid",
        alpha=1.0,
        seed=0,
        input_shape=[3, 32, 32],
        train_subset=100,
    )

    # Assert: a fifth of the 100-image subset, adapted to the model's input.
    assert client.images.shape == (20, 3, 32, 32)


def test_load_partition_rejects_an_out_of_range_id():
    # Execute / Assert
    with pytest.raises(ValueError, match="partition_id"):
        load_partition("digits", 4, 4, partitioning="iid", alpha=1.0, seed=0)


def test_load_dataset_cached_shares_one_entry_for_equivalent_arguments():
    # Execute: the same request spelled as a run config and as code would.
    from_config = load_dataset_cached("digits", data_dir="", input_shape=[1, 8, 8], seed=4)
    from_code = load_dataset_cached("digits", data_dir=None, input_shape=(1, 8, 8), seed=4)

    # Assert: one load, not two copies; a different seed is a different entry.
    assert from_config is from_code
    assert load_dataset_cached("digits", input_shape=(1, 8, 8), seed=5) is not from_code


# --------------------------------------------------------------------------- against Flower


def _flower_partitions(partitioner, table) -> list[np.ndarray]:
    """Sorted sample indices of every partition of ``table`` cut by ``partitioner``."""
    partitioner.dataset = table
    return [np.sort(np.asarray(partitioner.load_partition(pid)["index"])) for pid in range(partitioner.num_partitions)]


def test_iid_partitions_are_flowers_shards_of_a_seeded_permutation(digits):
    # Prepare: Flower's IidPartitioner on the labels in the order of a seed-0 permutation.
    labels = digits.train.labels
    order = np.random.default_rng(0).permutation(len(labels))
    table = datasets.Dataset.from_dict({"label": labels[order], "index": order})
    expected = _flower_partitions(IidPartitioner(10), table)

    # Execute
    parts = partition_indices(labels, 10, partitioning="iid", seed=0)

    # Assert
    for part, want in zip(parts, expected, strict=True):
        np.testing.assert_array_equal(part, want)


def _first_successful_dirichlet_draw(labels: np.ndarray, num_partitions: int, alpha: float):
    """Flower's DirichletPartitioner with seed 0, then redraw seeds derived from 0.

    Returns the partitions of the first draw that gives every client enough samples,
    and the number of draws that failed before it.
    """
    table = datasets.Dataset.from_dict({"label": labels, "index": np.arange(len(labels))})
    min_size = min(10, len(labels) // (2 * num_partitions))
    for attempt in range(20):
        seed = 0 if attempt == 0 else derive_seed(0, attempt, scheme="seed-sequence")
        partitioner = DirichletPartitioner(
            num_partitions,
            partition_by="label",
            alpha=alpha,
            seed=seed,
            min_partition_size=min_size,
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return _flower_partitions(partitioner, table), attempt
        except ValueError:
            continue
    raise AssertionError("no Dirichlet draw succeeded")


@pytest.mark.parametrize("alpha", [1.0, 0.01])
def test_dirichlet_partitions_are_flowers_draws_with_derived_redraw_seeds(digits, alpha):
    # Prepare: alpha 1 succeeds at once; alpha 0.01 over 10 clients needs redraws.
    labels = digits.train.labels
    expected, failed_draws = _first_successful_dirichlet_draw(labels, 10, alpha)
    assert (failed_draws > 0) == (alpha < 0.1)

    # Execute
    parts = partition_indices(labels, 10, partitioning="dirichlet", alpha=alpha, seed=0)

    # Assert
    for part, want in zip(parts, expected, strict=True):
        np.testing.assert_array_equal(part, want)
