"""Uploaded cut-layer activations: packed by a client, checked and split into batches by the server."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array

from fsl_sage_flwr.core.losses import LabelSpec
from fsl_sage_flwr.transport.arrays import ArraySpec, read_npy, read_npy_header
from fsl_sage_flwr.transport.compression import encode_activations
from fsl_sage_flwr.transport.errors import MalformedReplyError


@dataclass(frozen=True)
class SmashedUpload:
    """A validated upload: activations and labels split into their batches."""

    batches: list[tuple[torch.Tensor, torch.Tensor]]


def pack_uploads(
    uploads: Sequence[tuple[torch.Tensor, torch.Tensor]],
    cut_shape: tuple[int, ...],
    upload_dtype: str = "float32",
    labels: LabelSpec | None = None,
) -> tuple[np.ndarray, ...]:
    """Concatenate kept ``(z, y)`` batches into ``z`` encoded (and its scale), ``y``, batch sizes.

    ``y`` goes in ``labels``' dtype (int64 class indices without a spec).
    """
    dtype = labels.dtype if labels is not None else "int64"
    if uploads:
        z = torch.cat([zb for zb, _ in uploads])
        y = torch.cat([yb for _, yb in uploads]).detach().cpu().numpy().astype(dtype)
    else:
        z = torch.zeros((0, *cut_shape))
        y = np.zeros((0, *(labels.shape if labels is not None else ())), dtype=dtype)
    sizes = np.asarray([int(yb.shape[0]) for _, yb in uploads], dtype=np.int64)
    return (*encode_activations(z, upload_dtype), y, sizes)


def read_labels(array: Array, n: int, labels: LabelSpec) -> np.ndarray:
    """Decode an upload's ``y``: ``n`` labels of ``labels``' shape and dtype, else MalformedReplyError.

    The shape and dtype its ``.npy`` header declares are checked first, so a
    misfit is named as the labels' (a setup fault, see ``drop_reasons``) before
    the body is read.
    """
    declared = read_npy_header("y", array)
    if declared[0][1:] == labels.shape and declared[1] == labels.dtype and declared[0][:1] != (n,):
        # The right labels, the wrong count: a damaged reply, not a setup that can never fit.
        raise MalformedReplyError(f"'y' holds {declared[0][:1]} labels, expected {n}")
    if declared[0][:1] != (n,) or declared[0][1:] != labels.shape or declared[1] != labels.dtype:
        raise MalformedReplyError(
            f"labels have shape {declared[0][1:]} and dtype {declared[1]} per sample, "
            f"expected {labels.shape} {labels.dtype} for {n} samples"
        )
    return read_npy("y", array, ArraySpec((n, *labels.shape), labels.dtype))


def split_upload(
    z: np.ndarray, y: np.ndarray, sizes: np.ndarray, *, labels: LabelSpec, max_batch: int
) -> SmashedUpload:
    """Check decoded ``z``, ``y`` (against ``labels``) and batch sizes and split them into batches."""
    n = len(y)
    if len(sizes) > n // 2:
        raise MalformedReplyError("smashed 'batch-sizes' must be a vector of at most n / 2 sizes")
    # Bounding each size before summing rules out int64 overflow in the sum.
    if np.any(sizes < 2) or np.any(sizes > max_batch) or int(sizes.sum()) != n:
        raise MalformedReplyError(
            f"batch sizes {sizes.tolist()[:5]} must each be in [2, {max_batch}] and add up to {n}"
        )
    if not np.all(np.isfinite(z)):
        raise MalformedReplyError("smashed 'z' holds NaN or inf")
    problem = labels.problem(y)
    if problem is not None:
        raise MalformedReplyError(problem)
    if n == 0:
        return SmashedUpload([])  # np.split would make one empty batch of it
    bounds = np.cumsum(sizes)[:-1]
    return SmashedUpload(
        [
            (torch.from_numpy(zb.copy()), torch.from_numpy(yb.copy()))
            for zb, yb in zip(np.split(z, bounds), np.split(y, bounds))
        ]
    )
