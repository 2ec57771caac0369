"""Tests for fsl_sage_flwr.data's registry and load_dataset, on the bundled digits."""

from __future__ import annotations

import numpy as np
import pytest

from fsl_sage_flwr.data import DATASETS, RawSplits, load_dataset, loading, register_dataset

DIGITS_TRAIN, DIGITS_TEST = 1437, 360


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# --------------------------------------------------------------------------- digits


def test_digits_shapes_and_dtypes(digits):
    # Prepare / Execute: loaded by the module fixture.
    # Assert
    assert digits.train.images.shape == (DIGITS_TRAIN, 1, 8, 8)
    assert digits.test.images.shape == (DIGITS_TEST, 1, 8, 8)
    assert digits.train.images.dtype == np.float32 and digits.test.images.dtype == np.float32
    assert digits.train.labels.dtype == np.int64 and digits.test.labels.dtype == np.int64
    assert digits.num_classes == 10 and digits.input_shape == (1, 8, 8)
    assert set(np.unique(digits.test.labels)) == set(range(10))


def test_digits_train_split_is_normalised(digits):
    # Prepare / Execute: loaded by the module fixture.
    # Assert: one channel, so the train split has mean 0 and std 1 overall.
    assert abs(float(digits.train.images.mean())) < 1e-4
    assert abs(float(digits.train.images.std()) - 1.0) < 1e-3


def test_digits_test_split_is_the_same_for_every_seed():
    # Prepare / Execute: two runs with different seeds (and seeded train subsets).
    run_a = load_dataset("digits", train_subset=500, seed=0)
    run_b = load_dataset("digits", train_subset=500, seed=1)

    # Assert: the test sets are identical and full, the train subsets differ.
    np.testing.assert_array_equal(run_a.test.images, run_b.test.images)
    np.testing.assert_array_equal(run_a.test.labels, run_b.test.labels)
    assert len(run_a.test) == DIGITS_TEST
    assert not np.array_equal(run_a.train.images, run_b.train.images)


def test_train_subset_is_stratified_and_seeded(digits):
    # Prepare
    full_share = np.bincount(digits.train.labels) / len(digits.train)

    # Execute
    subset = load_dataset("digits", train_subset=200, seed=3)
    again = load_dataset("digits", train_subset=200, seed=3)

    # Assert: exact size, each class within one sample of its proportional quota.
    assert len(subset.train) == 200
    counts = np.bincount(subset.train.labels, minlength=10)
    assert np.all(np.abs(counts - 200 * full_share) < 1.0)
    np.testing.assert_array_equal(subset.train.images, again.train.images)
    assert len(subset.test) == DIGITS_TEST


def test_train_subset_not_smaller_than_train_keeps_everything(digits):
    # Execute
    splits = load_dataset("digits", train_subset=10_000)

    # Assert
    np.testing.assert_array_equal(splits.train.images, digits.train.images)


def test_load_dataset_pads_digits_to_three_channels_32(digits):
    # Execute
    splits = load_dataset("digits", input_shape=(3, 32, 32))

    # Assert: 12 px of normalised zeros around the unchanged normalised image.
    assert splits.train.images.shape == (DIGITS_TRAIN, 3, 32, 32)
    assert splits.input_shape == (3, 32, 32)
    np.testing.assert_array_equal(splits.train.images[:, :, 12:20, 12:20], np.repeat(digits.train.images, 3, axis=1))
    border = splits.train.images.copy()
    border[:, :, 12:20, 12:20] = 0
    assert not border.any()


def test_unknown_dataset_lists_registered_names():
    # Execute / Assert
    with pytest.raises(ValueError, match=r"registered: .*cifar10.*digits.*fashion-mnist.*mnist"):
        load_dataset("imagenet")


def test_registered_loader_is_used_by_load_dataset(monkeypatch):
    # Prepare: a private registry so the real one is untouched.
    monkeypatch.setattr(loading, "DATASETS", dict(DATASETS))
    images = np.linspace(0, 1, 4 * 2 * 2 * 2, dtype=np.float32).reshape(4, 2, 2, 2)

    @register_dataset("toy")
    def _toy(data_dir):
        return RawSplits(images, np.array([0, 1, 0, 1]), images[:2], np.array([0, 1]), 2)

    # Execute
    splits = load_dataset("toy")

    # Assert
    assert splits.input_shape == (2, 2, 2) and splits.num_classes == 2
    np.testing.assert_allclose(splits.train.images.mean(axis=(0, 2, 3)), 0, atol=1e-6)
    with pytest.raises(ValueError, match="already registered"):
        register_dataset("toy")(_toy)
