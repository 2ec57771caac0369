"""A train reply, client to server: laid out by the client, checked whole by the server before anything changes.

Reply, client to server (what Flower makes of a ``NumPyClient.fit`` result):

- ``"fitres.parameters"`` (ArrayRecord, keys ``"0"``, ``"1"``, ...): the trained
  shared model's arrays in state-dict order (none in a warm-up reply), then
  ``z`` ``(n, *cut_shape)``, the activations kept every q-th step, in the
  ``upload-dtype`` encoding (float32 by default; for ``int8`` its float32
  per-channel scale follows, see ``fsl_sage_flwr.transport.compression``), ``y``
  ``(n, *label_shape)`` in the split's label dtype (int64 ``(n,)`` class indices
  by default), their labels, and ``batch-sizes`` int64 ``(k,)``, how ``n``
  splits into the k uploaded batches, in upload order.
- ``"fitres.num_examples"`` (MetricRecord): the local training samples, the
  FedAvg weight.
- ``"fitres.metrics"`` (ConfigRecord, integers): ``partition-id``, ``local-steps``
  and ``peak-memory-bytes`` (see ``fsl_sage_flwr.core.memory``).
- ``"fitres.status"`` (ConfigRecord): Flower's status code and message.

:class:`TrainReply` is the named record on the client's side,
:func:`parse_train_reply` checks every record of a reply and returns a
:class:`ParsedReply` only once all of them pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict

from fsl_sage_flwr.core.losses import LabelSpec
from fsl_sage_flwr.transport.arrays import ArraySpec, read_npy, to_array
from fsl_sage_flwr.transport.compression import decode_activations, upload_encoding
from fsl_sage_flwr.transport.errors import MalformedReplyError, strict_int
from fsl_sage_flwr.transport.keys import (
    LOCAL_STEPS_KEY,
    PARTITION_ID_KEY,
    PEAK_MEMORY_KEY,
    REPLY_ARRAYS_KEY,
    REPLY_METRICS_KEY,
    REPLY_NUM_EXAMPLES_KEY,
    REPLY_STATUS_KEY,
)
from fsl_sage_flwr.transport.local_training import LocalTraining
from fsl_sage_flwr.transport.log_text import client_text
from fsl_sage_flwr.transport.uploads import SmashedUpload, read_labels, split_upload


@dataclass(frozen=True)
class TrainReply:
    """A client's reply with its fields named; :meth:`to_fit_result` lays it out.

    ``shared`` is absent in a warm-up reply; ``smashed`` (``z`` as encoded, ``y``,
    batch sizes, as :func:`pack_uploads` returns them) is absent for FedAvg.
    """

    partition_id: int
    num_examples: int
    shared: dict[str, np.ndarray] | None = None
    smashed: tuple[np.ndarray, ...] | None = None
    local_steps: int = 0
    peak_memory_bytes: int = 0

    def to_fit_result(self) -> tuple[list[np.ndarray], int, dict[str, int]]:
        """Return what ``NumPyClient.fit`` returns: shared arrays, then ``z`` (and its scale), ``y``, batch sizes."""
        arrays = list(self.shared.values()) if self.shared is not None else []
        arrays += list(self.smashed) if self.smashed is not None else []
        metrics = {
            PARTITION_ID_KEY: int(self.partition_id),
            LOCAL_STEPS_KEY: int(self.local_steps),
            PEAK_MEMORY_KEY: int(self.peak_memory_bytes),
        }
        return arrays, int(self.num_examples), metrics


@dataclass
class ParsedReply:
    """A reply that passed every check, ready to use."""

    node_id: int
    partition_id: int
    num_examples: int
    arrays: ArrayRecord | None
    upload: SmashedUpload
    metrics: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ReplyBounds:
    """What the server accepts in a reply: shapes, classes and sizes."""

    cut_shape: tuple[int, ...]
    num_classes: int | None
    training: LocalTraining
    max_examples: int
    labels: LabelSpec | None = None

    @property
    def label_spec(self) -> LabelSpec:
        """What one uploaded label must be: ``labels``, else one class in ``[0, num_classes)``."""
        return self.labels if self.labels is not None else LabelSpec((), "int64", self.num_classes)


_REPLY_METRICS = {PARTITION_ID_KEY, LOCAL_STEPS_KEY, PEAK_MEMORY_KEY}


def parse_train_reply(
    node_id: int,
    content: RecordDict,
    *,
    shared_spec: Mapping[str, ArraySpec] | None,
    bounds: ReplyBounds,
) -> ParsedReply:
    """Check a whole train reply before anything uses it; raise MalformedReplyError.

    Parameters
    ----------
    node_id : int
        The sender, as the transport reports it.
    content : RecordDict
        The reply in Flower's ``fit`` layout.
    shared_spec : Mapping[str, ArraySpec], optional
        The shared model's arrays, in order; ``None`` for a warm-up reply, which
        carries activations only.
    bounds : ReplyBounds
        Cut shape, classes, the local-training settings and the largest
        ``num-examples`` accepted.
    """
    expected = {REPLY_ARRAYS_KEY, REPLY_NUM_EXAMPLES_KEY, REPLY_METRICS_KEY, REPLY_STATUS_KEY}
    if set(content.keys()) != expected:
        raise MalformedReplyError(
            f"reply holds records {client_text(sorted(content.keys()))}, expected {sorted(expected)}"
        )
    status = content.config_records.get(REPLY_STATUS_KEY)
    if status is None or status.get("code") != 0:
        message = status.get("message", "") if status is not None else "missing"
        raise MalformedReplyError(f"client reports failure: {client_text(message)}")
    num_examples = strict_int(
        content.metric_records.get(REPLY_NUM_EXAMPLES_KEY, {}).get("num_examples"), "num-examples"
    )
    if not 1 <= num_examples <= bounds.max_examples:
        raise MalformedReplyError(f"num-examples {num_examples} outside [1, {bounds.max_examples}]")
    metrics = content.config_records.get(REPLY_METRICS_KEY)
    if metrics is None or not set(metrics) <= _REPLY_METRICS or PARTITION_ID_KEY not in metrics:
        raise MalformedReplyError(f"reply metrics must be {sorted(_REPLY_METRICS)} with '{PARTITION_ID_KEY}'")
    values = {key: strict_int(value, key) for key, value in metrics.items()}
    if min(values.values()) < 0:
        raise MalformedReplyError("reply metrics must not be negative")
    record = content.array_records.get(REPLY_ARRAYS_KEY)
    if record is None:
        raise MalformedReplyError(f"'{REPLY_ARRAYS_KEY}' is not an array record")
    specs = list((shared_spec or {}).items())
    encoding = upload_encoding(bounds.training.upload_dtype)
    upload_names = ["z", "z-scale"][: encoding.num_arrays] + ["y", "batch-sizes"]
    count = len(specs) + len(upload_names)
    if list(record.keys()) != [str(i) for i in range(count)]:
        raise MalformedReplyError(
            f"reply carries {len(record.keys())} arrays, expected {count} "
            f"({len(specs)} model arrays, then {', '.join(upload_names)})"
        )
    arrays = [record[str(i)] for i in range(count)]
    decoded = {name: read_npy(name, array, spec) for (name, spec), array in zip(specs, arrays)}
    for name, values_ in decoded.items():
        if values_.dtype.kind == "f" and not np.all(np.isfinite(values_)):
            raise MalformedReplyError(f"model array '{name}' holds NaN or inf")
    # A training reply holds every q-th of its steps; a warm-up reply one batch.
    training = bounds.training
    max_samples = training.max_uploaded(num_examples) if shared_spec is not None else training.batch_size
    upload = _parse_upload(arrays[len(specs) :], bounds, max_samples)
    model = ArrayRecord(array_dict={k: to_array(v) for k, v in decoded.items()}) if shared_spec is not None else None
    return ParsedReply(node_id, values[PARTITION_ID_KEY], num_examples, model, upload, values)


def _parse_upload(arrays: list[Array], bounds: ReplyBounds, max_samples: int) -> SmashedUpload:
    encoding = upload_encoding(bounds.training.upload_dtype)
    z_arr, y_arr, sizes_arr = arrays[0], arrays[-2], arrays[-1]
    z = read_npy(
        "z",
        z_arr,
        None,
        max_bytes=max_samples * math.prod(bounds.cut_shape) * encoding.itemsize,
        dtype=encoding.wire_dtype,
    )
    if (
        z.ndim != 1 + len(bounds.cut_shape)
        or str(z.dtype) != encoding.wire_dtype
        or z.shape[1:] != tuple(bounds.cut_shape)
    ):
        raise MalformedReplyError(
            f"array 'z' has shape {z.shape} and dtype {z.dtype}, "
            f"expected {encoding.wire_dtype} (n, *{bounds.cut_shape}) for upload-dtype {encoding.name}"
        )
    n = int(z.shape[0])
    if n > max_samples:
        raise MalformedReplyError(f"uploads {n} samples, more than the bound {max_samples}")
    scale = None
    if encoding.has_scale:
        scale = read_npy("z-scale", arrays[1], ArraySpec((bounds.cut_shape[0],), "float32"))
        if not np.all(np.isfinite(scale)) or np.any(scale < 0):
            raise MalformedReplyError("array 'z-scale' must hold finite scales >= 0")
    z = decode_activations(z, scale, encoding.name)
    y = read_labels(y_arr, n, bounds.label_spec)
    sizes = read_npy("batch-sizes", sizes_arr, None, max_bytes=8 * (n // 2))
    if sizes.ndim != 1 or sizes.dtype != np.int64:
        raise MalformedReplyError(f"array 'batch-sizes' must be an int64 vector, got {sizes.dtype} {sizes.shape}")
    return split_upload(z, y, sizes, labels=bounds.label_spec, max_batch=bounds.training.batch_size)
