"""One SplitFed step, a request and reply pair per batch: the uploaded batch and the reply's metrics, checked.

SplitFed exchanges (message type ``train.splitstep``), one pair per batch: the
request carries ``config`` (``server-round``, ``step``), at step 0 the client
model in ``"arrays"``, after it the cut-layer gradient of the previous batch in
``"grad"`` (``grad`` float32 ``(b, *cut_shape)``). The reply carries the next
batch in ``"smashed"`` and ``partition-id``, ``num-examples`` and
``num-batches`` in ``"metrics"``; the reply to the last gradient carries the
trained client model in ``"arrays"`` instead.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from fsl_sage_flwr.core.losses import LabelSpec
from fsl_sage_flwr.transport.arrays import ArraySpec, load_array, to_array
from fsl_sage_flwr.transport.errors import MalformedReplyError, strict_int
from fsl_sage_flwr.transport.keys import METRICS_KEY
from fsl_sage_flwr.transport.log_text import client_text
from fsl_sage_flwr.transport.uploads import SmashedUpload, read_labels, split_upload


def parse_smashed(
    record: ArrayRecord,
    *,
    cut_shape: tuple[int, ...],
    labels: LabelSpec,
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
    labels : LabelSpec
        What one sample's label must be (shape, dtype, class range or finite).
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
        raise MalformedReplyError(
            f"smashed record holds {client_text(sorted(record.keys()))}, expected z, y, batch-sizes"
        )
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
    y = read_labels(record["y"], n, labels)
    sizes = load_array("batch-sizes", record["batch-sizes"], ArraySpec((num_batches,), "int64"))
    return split_upload(z, y, sizes, labels=labels, max_batch=max_batch if max_batch is not None else n)


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


def reply_int(content: RecordDict, key: str) -> int:
    """Return one integer of the reply's ``metrics`` record; a float or bool is refused, not truncated."""
    value = reply_metric(content, key)
    return strict_int(value, key)


def check_metrics(content: RecordDict) -> None:
    """Require exactly one ``metrics`` record of finite scalars and no config record."""
    if set(content.metric_records) != {METRICS_KEY} or content.config_records:
        raise MalformedReplyError(
            f"reply carries metric records {sorted(content.metric_records)} and config records "
            f"{sorted(content.config_records)}; expected only '{METRICS_KEY}'"
        )
    for key in content.metric_records[METRICS_KEY]:
        reply_metric(content, key)
