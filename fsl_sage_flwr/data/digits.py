"""Scikit-learn's bundled 8x8 digits as the registered dataset ``digits``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fsl_sage_flwr.data.containers import RawSplits
from fsl_sage_flwr.data.loading import register_dataset
from fsl_sage_flwr.data.transforms import scale_to_unit
from fsl_sage_flwr.extras import import_extra

# The digits test split must be the same in every run, whatever the run seed, so that
# accuracies of different runs are measured on the same images.
_DIGITS_SPLIT_SEED = 1797
_DIGITS_TEST_FRACTION = 0.2


@register_dataset("digits")
def _load_digits(data_dir: Path | None) -> RawSplits:
    """Scikit-learn's bundled 8x8 digits with a fixed stratified 80/20 split."""
    del data_dir  # Bundled with scikit-learn: nothing to look for.
    # scikit-learn is an optional extra: imported here, so the plugin loads without it.
    sk_datasets = import_extra("sklearn.datasets", "data", "the dataset 'digits'")
    sk_model_selection = import_extra("sklearn.model_selection", "data", "the dataset 'digits'")

    bunch = sk_datasets.load_digits()
    images = scale_to_unit(bunch.images[:, None], 16)  # pixel values are 0..16
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = sk_model_selection.train_test_split(
        np.arange(len(labels)),
        test_size=_DIGITS_TEST_FRACTION,
        stratify=labels,
        random_state=_DIGITS_SPLIT_SEED,
    )
    return RawSplits(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], 10)
