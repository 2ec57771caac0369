"""The dataset registry and load_dataset: a registered loader's images, normalised and reshaped."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from fsl_sage_flwr.data.containers import ArrayDataset, DatasetSplits, RawSplits
from fsl_sage_flwr.data.transforms import adapt_images, channel_stats, normalise


class DatasetNotFoundError(FileNotFoundError):
    """The files of a dataset are in none of the places searched."""


DatasetLoader = Callable[[Path | None], RawSplits]

#: Registered datasets: name -> loader taking the user's data directory (or ``None``).
DATASETS: dict[str, DatasetLoader] = {}


def register_dataset(name: str) -> Callable[[DatasetLoader], DatasetLoader]:
    """Register the decorated loader under ``name`` in :data:`DATASETS`.

    Parameters
    ----------
    name : str
        Name used in :func:`load_dataset` and in the run config.

    Returns
    -------
    Callable
        The decorator; it returns the loader unchanged.

    Raises
    ------
    ValueError
        If ``name`` is already registered.
    """

    def decorator(loader: DatasetLoader) -> DatasetLoader:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = loader
        return loader

    return decorator


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    input_shape: tuple[int, int, int] | None = None,
    train_subset: int | None = None,
    seed: int = 0,
) -> DatasetSplits:
    """Load a registered dataset, normalised and optionally reshaped.

    The per-channel mean and standard deviation are computed on the full training split
    (before ``train_subset``), so the test set is identical for every subset and seed.

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS` (``digits``, ``mnist``, ``fashion-mnist``, ``cifar10``,
        ``cifar100``).
    data_dir : str or None
        Folder with the dataset files, or its parent when they sit in a subfolder named
        after the dataset (or, for CIFAR, after the archive's folder). ``None`` or ``""``:
        none given. The same subfolders of :data:`SYSTEM_DATASET_ROOT` are searched
        last (see :func:`dataset_folders`); CIFAR then comes from the Hugging Face hub.
    input_shape : tuple of int or None
        ``(C, H, W)`` the model needs. Applied with :func:`adapt_images` after
        normalisation, so padded pixels hold 0, the normalised value of the training mean.
    train_subset : int or None
        Keep a stratified random sample of this many training images (seeded with
        ``seed``); ignored when not smaller than the training split.
    seed : int
        Seed of the ``train_subset`` sample.

    Returns
    -------
    DatasetSplits
        Normalised ``float32`` images and ``int64`` labels.

    Raises
    ------
    ValueError
        If ``name`` is unknown, ``train_subset`` is not positive or the images cannot be
        adapted to ``input_shape``.
    DatasetNotFoundError
        If the dataset's files cannot be found.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; registered: {', '.join(sorted(DATASETS))}")
    if train_subset is not None and train_subset < 1:
        raise ValueError(f"train_subset must be positive, got {train_subset}")

    raw = DATASETS[name](Path(data_dir) if data_dir else None)
    mean, std = channel_stats(raw.train_images)
    train = ArrayDataset(normalise(raw.train_images, mean, std), raw.train_labels.astype(np.int64, copy=False))
    test = ArrayDataset(normalise(raw.test_images, mean, std), raw.test_labels.astype(np.int64, copy=False))

    if train_subset is not None and train_subset < len(train):
        train = train.subset(_stratified_sample(train.labels, train_subset, seed))
    if input_shape is not None:
        train = ArrayDataset(adapt_images(train.images, input_shape), train.labels)
        test = ArrayDataset(adapt_images(test.images, input_shape), test.labels)

    c, h, w = train.images.shape[1:]
    return DatasetSplits(train, test, raw.num_classes, (int(c), int(h), int(w)))


def _stratified_sample(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted indices of ``size`` samples keeping each class's share of ``labels``.

    Every class gets the floor of its proportional quota; the slots left over go to the
    classes with the largest fractional parts (random order among ties).
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / len(labels)
    quotas = np.floor(exact).astype(np.int64)
    leftover = size - int(quotas.sum())
    order = np.lexsort((rng.random(len(classes)), -(exact - quotas)))
    quotas[order[:leftover]] += 1
    chosen = [
        rng.choice(np.flatnonzero(labels == cls), quota, replace=False)
        for cls, quota in zip(classes, quotas, strict=True)
    ]
    return np.sort(np.concatenate(chosen))
