"""Uploaded cut-layer activations: packed by a client, checked and split into batches by the server."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

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
) -> tuple[np.ndarray, ...]:
    """Concatenate kept ``(z, y)`` batches into ``z`` encoded (and its scale), ``y``, batch sizes."""
    if uploads:
        z = torch.cat([zb for zb, _ in uploads])
        y = torch.cat([yb for _, yb in uploads]).detach().cpu().numpy().astype(np.int64)
    else:
        z = torch.zeros((0, *cut_shape))
        y = np.zeros((0,), dtype=np.int64)
    sizes = np.asarray([int(yb.shape[0]) for _, yb in uploads], dtype=np.int64)
    return (*encode_activations(z, upload_dtype), y, sizes)


def split_upload(z: np.ndarray, y: np.ndarray, sizes: np.ndarray, *, num_classes: int, max_batch: int) -> SmashedUpload:
    """Check decoded ``z``, ``y`` and batch sizes and split them into batches."""
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
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise MalformedReplyError(f"labels outside [0, {num_classes})")
    if n == 0:
        return SmashedUpload([])  # np.split would make one empty batch of it
    bounds = np.cumsum(sizes)[:-1]
    return SmashedUpload(
        [
            (torch.from_numpy(zb.copy()), torch.from_numpy(yb.copy()))
            for zb, yb in zip(np.split(z, bounds), np.split(y, bounds))
        ]
    )
