"""The FSL-SAGE wire contract between the strategy and the client, and its checks.

Request, server to client (message type ``train``, or ``train.warmup`` once at start):

- ``"arrays"`` (ArrayRecord): the client-side model's state dict (parameters and
  BatchNorm buffers), keyed by state-dict name.
- ``"aux"`` (ArrayRecord, optional): the client's auxiliary model, present only
  when the server aligned it since it last sent it.
- ``"config"`` (ConfigRecord): ``server-round`` and the round's training settings.

Reply, client to server:

- ``"arrays"`` (ArrayRecord): the trained client-side model, same keys, shapes and
  dtypes as sent (absent in the warm-up reply: nothing was trained).
- ``"smashed"`` (ArrayRecord): ``z`` float32 ``(n, *cut_shape)``, the activations
  kept every q-th step; ``y`` int64 ``(n,)``, their labels; ``batch-sizes`` int64
  ``(k,)``, how ``n`` splits into the k uploaded batches, in upload order.
- ``"metrics"`` (MetricRecord): ``num-examples`` (local training samples, the
  FedAvg weight), ``partition-id``, and ``train-loss``.

SplitFed exchanges (message type ``train.splitstep``), one pair per batch: the
request carries ``config`` (``server-round``, ``step``), at step 0 the client
model in ``"arrays"``, after it the cut-layer gradient of the previous batch in
``"grad"`` (``grad`` float32 ``(b, *cut_shape)``). The reply carries the next
batch in ``"smashed"`` and ``partition-id``, ``num-examples`` and
``num-batches`` in ``"metrics"``; the reply to the last gradient carries the
trained client model in ``"arrays"`` instead.

Only numpy arrays and scalars travel; Flower serialises arrays as ``.npy`` without
pickle. Every size is checked against what the server expects before use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, RecordDict

ARRAYS_KEY = "arrays"
AUX_KEY = "aux"
CONFIG_KEY = "config"
SMASHED_KEY = "smashed"
METRICS_KEY = "metrics"
GRAD_KEY = "grad"
WARMUP_ACTION = "warmup"
SPLIT_STEP_ACTION = "splitstep"


class MalformedReplyError(ValueError):
    """A client reply that breaks the wire contract; the reason is the message."""


@dataclass(frozen=True)
class ArraySpec:
    """Expected shape and dtype of one named array."""

    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class SmashedUpload:
    """A validated upload: activations and labels split into their batches."""

    batches: list[tuple[torch.Tensor, torch.Tensor]]

    @property
    def num_samples(self) -> int:
        """Return the number of uploaded samples."""
        return sum(int(y.shape[0]) for _, y in self.batches)


def state_dict_spec(state_dict: Mapping[str, torch.Tensor]) -> dict[str, ArraySpec]:
    """Describe a model's state dict as the arrays a reply must carry."""
    return {
        name: ArraySpec(tuple(t.shape), str(t.detach().cpu().numpy().dtype))
        for name, t in state_dict.items()
    }


def check_model_record(record: ArrayRecord, spec: Mapping[str, ArraySpec]) -> None:
    """Raise MalformedReplyError unless ``record`` matches ``spec`` exactly and is finite."""
    missing = sorted(set(spec) - set(record.keys()))
    extra = sorted(set(record.keys()) - set(spec))
    if missing or extra:
        raise MalformedReplyError(
            f"model arrays differ from the expected keys (missing {missing[:3]}, "
            f"unexpected {extra[:3]})"
        )
    for name, expected in spec.items():
        array = record[name]
        _check_array_header(name, array.shape, array.dtype, expected)
        values = array.numpy()
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            raise MalformedReplyError(f"model array '{name}' holds NaN or inf")


def parse_smashed(
    record: ArrayRecord,
    *,
    cut_shape: tuple[int, ...],
    num_classes: int,
    max_samples: int,
) -> SmashedUpload:
    """Validate a reply's ``smashed`` record and split it into uploaded batches.

    Parameters
    ----------
    record : ArrayRecord
        The reply's ``"smashed"`` record.
    cut_shape : tuple[int, ...]
        Shape of one sample's cut-layer activation.
    num_classes : int
        Labels must lie in ``[0, num_classes)``.
    max_samples : int
        Upper bound on uploaded samples (what the client's data and q allow).

    Raises
    ------
    MalformedReplyError
        On a missing array, a wrong shape or dtype, a size over the bound,
        inconsistent batch sizes, a label out of range, or NaN/inf.
    """
    for key in ("z", "y", "batch-sizes"):
        if key not in record:
            raise MalformedReplyError(f"smashed record lacks array '{key}'")
    z_arr, y_arr, sizes_arr = record["z"], record["y"], record["batch-sizes"]
    if len(z_arr.shape) < 1:
        raise MalformedReplyError("smashed 'z' is a scalar")
    n = int(z_arr.shape[0])
    if n > max_samples:
        raise MalformedReplyError(f"uploads {n} samples, more than the bound {max_samples}")
    _check_array_header("z", z_arr.shape, z_arr.dtype, ArraySpec((n, *cut_shape), "float32"))
    _check_array_header("y", y_arr.shape, y_arr.dtype, ArraySpec((n,), "int64"))
    if len(sizes_arr.shape) != 1 or sizes_arr.dtype != "int64" or math.prod(sizes_arr.shape) > n + 1:
        raise MalformedReplyError("smashed 'batch-sizes' must be a short int64 vector")
    z, y, sizes = z_arr.numpy(), y_arr.numpy(), sizes_arr.numpy()
    if np.any(sizes < 1) or int(sizes.sum()) != n:
        raise MalformedReplyError(f"batch sizes {sizes.tolist()[:5]} do not add up to {n} samples")
    if not np.all(np.isfinite(z)):
        raise MalformedReplyError("smashed 'z' holds NaN or inf")
    if n and (y.min() < 0 or y.max() >= num_classes):
        raise MalformedReplyError(f"labels outside [0, {num_classes})")
    bounds = np.cumsum(sizes)[:-1]
    batches = [
        (torch.from_numpy(zb.copy()), torch.from_numpy(yb.copy()))
        for zb, yb in zip(np.split(z, bounds), np.split(y, bounds))
    ]
    return SmashedUpload(batches)


def smashed_arrays_record(z: np.ndarray, y: np.ndarray, batch_sizes: np.ndarray) -> ArrayRecord:
    """Pack a reply's uploaded activations, labels and batch sizes."""
    return ArrayRecord({"z": to_array(z), "y": to_array(y), "batch-sizes": to_array(batch_sizes)})


def reply_metric(content: RecordDict, key: str) -> int | float:
    """Return one scalar of the reply's ``metrics`` record or raise MalformedReplyError."""
    metrics = content.metric_records.get(METRICS_KEY)
    if metrics is None or key not in metrics:
        raise MalformedReplyError(f"reply lacks metric '{key}'")
    value = metrics[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise MalformedReplyError(f"metric '{key}' is not a finite number")
    return value


def to_array(values: np.ndarray) -> Array:
    """Wrap a numpy array for a Flower ArrayRecord (contiguous, no pickle)."""
    return Array(np.ascontiguousarray(values))


def _check_array_header(
    name: str, shape: tuple[int, ...], dtype: str, expected: ArraySpec
) -> None:
    if tuple(shape) != tuple(expected.shape):
        raise MalformedReplyError(
            f"array '{name}' has shape {tuple(shape)}, expected {expected.shape}"
        )
    if dtype != expected.dtype:
        raise MalformedReplyError(f"array '{name}' has dtype {dtype}, expected {expected.dtype}")
