"""A user's data made into an :class:`ArrayDataset`: float32 inputs, labels in the split's declared dtype."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fsl_sage_flwr.core.losses import LabelSpec
from fsl_sage_flwr.data.containers import ArrayDataset

#: Data a user hands over: ``(inputs, labels)`` as numpy arrays or tensors, a torch
#: ``Dataset`` of ``(input, label)`` pairs, or an :class:`ArrayDataset`.
DataLike = ArrayDataset | tuple[Any, Any] | torch.utils.data.Dataset


def as_dataset(data: DataLike, labels: LabelSpec | None = None) -> ArrayDataset:
    """Turn user data into an :class:`ArrayDataset` (float32 inputs).

    Parameters
    ----------
    data : DataLike
        The samples and their labels.
    labels : LabelSpec, optional
        What one label is; integer labels become int64 and real ones float32
        (the range is checked later, against the classes). Without it: one
        integer class per sample, as int64.

    Raises
    ------
    ValueError
        When inputs are not numeric, or labels are not what ``labels`` declares
        (without it: not one integer per sample).
    """
    if isinstance(data, ArrayDataset):
        inputs, values = data.images, data.labels
    elif isinstance(data, tuple) and len(data) == 2:
        inputs, values = _to_numpy(data[0]), _to_numpy(data[1])
    elif isinstance(data, torch.utils.data.Dataset):
        pairs = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
        if not pairs:
            raise ValueError("the dataset is empty")
        inputs = np.stack([_to_numpy(x) for x, _ in pairs])
        values = np.stack([_to_numpy(y) for _, y in pairs])
    else:
        raise ValueError(f"data must be (inputs, labels) or a torch Dataset, got {type(data).__name__}")
    if inputs.dtype.kind not in "fiub":
        raise ValueError(f"inputs must be numeric, got {inputs.dtype}")
    values = _checked_labels(values, labels)
    if isinstance(data, ArrayDataset) and values is data.labels and inputs.dtype == np.float32:
        return data
    return ArrayDataset(np.ascontiguousarray(inputs, dtype=np.float32), values)


def _checked_labels(values: np.ndarray, labels: LabelSpec | None) -> np.ndarray:
    if labels is None:
        if values.dtype.kind not in "iu" or values.ndim != 1:
            raise ValueError(
                f"labels must be one integer per sample, got dtype {values.dtype} and shape {values.shape}"
            )
        return values.astype(np.int64, copy=False)
    values = labels.cast(values)
    if values.shape[1:] != labels.shape or str(values.dtype) != labels.dtype:
        raise ValueError(
            f"labels have shape {values.shape[1:]} and dtype {values.dtype} per sample, "
            f"the split declares {labels.shape} {labels.dtype}"
        )
    return values


def _to_numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)
