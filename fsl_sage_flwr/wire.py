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
- ``"metrics"`` (MetricRecord, finite scalars only): ``num-examples`` (local
  training samples, the FedAvg weight), ``partition-id``, ``local-steps`` and
  ``peak-memory-bytes`` (see ``fsl_sage_flwr.memory``).

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
# Room for the .npy header in front of an array's raw bytes.
_NPY_HEADER_BYTES = 4096
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
        values = load_array(name, record[name], expected)
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            raise MalformedReplyError(f"model array '{name}' holds NaN or inf")


def load_array(name: str, array: Array, expected: ArraySpec) -> np.ndarray:
    """Deserialise one received array after checking it is what ``expected`` says.

    The declared shape and dtype are checked first and the raw size is bounded,
    so nothing large or foreign is decoded; the decoded array is checked again,
    since Flower does not tie an array's bytes to its declared header.
    """
    _check_array_header(name, tuple(array.shape), str(array.dtype), expected)
    if array.stype != "numpy.ndarray":
        raise MalformedReplyError(f"array '{name}' is not a numpy array ({array.stype})")
    limit = math.prod(expected.shape) * np.dtype(expected.dtype).itemsize + _NPY_HEADER_BYTES
    if len(array.data) > limit:
        raise MalformedReplyError(f"array '{name}' carries {len(array.data)} bytes, more than {limit}")
    try:
        values = array.numpy()
    except Exception as err:  # any decoding failure is the sender's fault
        raise MalformedReplyError(f"array '{name}' does not decode: {type(err).__name__}") from err
    _check_array_header(f"{name} (decoded)", values.shape, str(values.dtype), expected)
    return values


def parse_smashed(
    record: ArrayRecord,
    *,
    cut_shape: tuple[int, ...],
    num_classes: int,
    max_samples: int,
    max_batch: int | None = None,
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
        Upper bound on uploaded samples (what the client's data, B, E and q allow).
    max_batch : int, optional
        Upper bound on one batch's size (the batch size B).

    Raises
    ------
    MalformedReplyError
        On a missing or extra array, a wrong shape or dtype, a size over a
        bound, a batch of fewer than two samples, inconsistent batch sizes, a
        label out of range, or NaN/inf.
    """
    if set(record.keys()) != {"z", "y", "batch-sizes"}:
        raise MalformedReplyError(f"smashed record holds {sorted(record.keys())}, expected z, y, batch-sizes")
    z_arr = record["z"]
    if len(z_arr.shape) < 1:
        raise MalformedReplyError("smashed 'z' is a scalar")
    n = int(z_arr.shape[0])
    if n > max_samples:
        raise MalformedReplyError(f"uploads {n} samples, more than the bound {max_samples}")
    num_batches = int(record["batch-sizes"].shape[0]) if len(record["batch-sizes"].shape) == 1 else -1
    if not 0 <= num_batches <= max(n // 2, 0):
        raise MalformedReplyError("smashed 'batch-sizes' must be a vector of at most n / 2 sizes")
    z = load_array("z", z_arr, ArraySpec((n, *cut_shape), "float32"))
    y = load_array("y", record["y"], ArraySpec((n,), "int64"))
    sizes = load_array("batch-sizes", record["batch-sizes"], ArraySpec((num_batches,), "int64"))
    largest = max_batch if max_batch is not None else n
    # Bounding each size before summing rules out int64 overflow in the sum.
    if np.any(sizes < 2) or np.any(sizes > largest) or int(sizes.sum()) != n:
        raise MalformedReplyError(
            f"batch sizes {sizes.tolist()[:5]} must each be in [2, {largest}] and add up to {n}"
        )
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


def check_metrics(content: RecordDict) -> None:
    """Require exactly one ``metrics`` record of finite scalars and no config record."""
    if set(content.metric_records) != {METRICS_KEY} or content.config_records:
        raise MalformedReplyError(
            f"reply carries metric records {sorted(content.metric_records)} and config records "
            f"{sorted(content.config_records)}; expected only '{METRICS_KEY}'"
        )
    for key in content.metric_records[METRICS_KEY]:
        reply_metric(content, key)


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
