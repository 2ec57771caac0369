"""The in-memory dataset records: samples with labels, train/test splits, raw loader output."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class ArrayDataset:
    """Inputs and labels held in memory as NumPy arrays.

    Attributes
    ----------
    images : np.ndarray
        ``float32`` inputs of shape ``(N, ...)``: images ``(N, C, H, W)`` for the
        built-in datasets (normalised with the training split's per-channel mean
        and standard deviation), or any per-sample shape, e.g. ``(N, features)``.
    labels : np.ndarray
        ``(N, *label_shape)``: ``int64`` classes ``(N,)`` for the built-in
        datasets; a split may declare other shapes and float32 targets.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim < 2:
            raise ValueError(f"inputs must be (N, ...) with one row per sample, got shape {self.images.shape}")
        if self.labels.ndim < 1 or len(self.labels) != len(self.images):
            raise ValueError(f"labels must be (N, ...) with N = {len(self.images)}, got shape {self.labels.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> ArrayDataset:
        """Return the samples at ``indices`` (a copy, in the order given).

        Parameters
        ----------
        indices : np.ndarray
            Integer indices (or a boolean mask) into this dataset.

        Returns
        -------
        ArrayDataset
            A new dataset holding copies of the selected samples.
        """
        indices = np.asarray(indices)
        return ArrayDataset(self.images[indices], self.labels[indices])


@dataclass(frozen=True, eq=False)
class DatasetSplits:
    """The train and test splits of a dataset, ready for training.

    Attributes
    ----------
    train, test : ArrayDataset
        Both normalised with the statistics of the full training split.
    num_classes : int
        Number of label classes.
    input_shape : tuple[int, int, int]
        ``(C, H, W)`` of the images as returned (after any :func:`adapt_images`).
    """

    train: ArrayDataset
    test: ArrayDataset
    num_classes: int
    input_shape: tuple[int, int, int]


@dataclass(frozen=True, eq=False)
class RawSplits:
    """What a registered loader returns: images scaled to ``[0, 1]``, not yet normalised.

    Attributes
    ----------
    train_images, test_images : np.ndarray
        Arrays of shape ``(N, C, H, W)`` with values in ``[0, 1]``.
    train_labels, test_labels : np.ndarray
        Integer arrays of shape ``(N,)``.
    num_classes : int
        Number of label classes.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
