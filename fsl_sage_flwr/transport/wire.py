"""The wire contract between the split strategies and their clients, and its checks.

FSL-SAGE and CSE-FSL speak Flower's own ``fit`` layout, the one a ``NumPyClient``
reads and writes, so the same client serves a ``ClientApp(client_fn=...)``, the
handlers of :func:`fsl_sage_flwr.register_client` and a legacy server alike.
Positions inside the flat array lists are defined here and nowhere else:
:class:`TrainRequest` and :class:`TrainReply` are the named records on either side.

Request, server to client (message type ``train``):

- ``"fitins.parameters"`` (ArrayRecord): the shared model's state-dict arrays in
  state-dict order, then, when the config says ``aux-included``, the client's
  auxiliary model's (FSL-SAGE only; the server aligned it since it last sent it).
- ``"fitins.config"`` (ConfigRecord): ``server-round``, ``warmup`` (FSL-SAGE's
  exchange before round 1: reply with one batch of activations, train nothing),
  ``aux-included`` and the :class:`LocalTraining` settings the client must obey.

Reply, client to server (what Flower makes of a ``NumPyClient.fit`` result):

- ``"fitres.parameters"`` (ArrayRecord, keys ``"0"``, ``"1"``, ...): the trained
  shared model's arrays in state-dict order (none in a warm-up reply), then
  ``z`` ``(n, *cut_shape)``, the activations kept every q-th step, in the
  ``upload-dtype`` encoding (float32 by default; for ``int8`` its float32
  per-channel scale follows, see ``fsl_sage_flwr.transport.compression``), ``y``
  int64 ``(n,)``, their labels, and ``batch-sizes`` int64 ``(k,)``, how ``n``
  splits into the k uploaded batches, in upload order.
- ``"fitres.num_examples"`` (MetricRecord): the local training samples, the
  FedAvg weight.
- ``"fitres.metrics"`` (ConfigRecord, integers): ``partition-id``, ``local-steps``
  and ``peak-memory-bytes`` (see ``fsl_sage_flwr.core.memory``).
- ``"fitres.status"`` (ConfigRecord): Flower's status code and message.

SplitFed exchanges (message type ``train.splitstep``), one pair per batch: the
request carries ``config`` (``server-round``, ``step``), at step 0 the client
model in ``"arrays"``, after it the cut-layer gradient of the previous batch in
``"grad"`` (``grad`` float32 ``(b, *cut_shape)``). The reply carries the next
batch in ``"smashed"`` and ``partition-id``, ``num-examples`` and
``num-batches`` in ``"metrics"``; the reply to the last gradient carries the
trained client model in ``"arrays"`` instead.

Only numpy arrays and scalars travel; arrays are ``.npy`` bytes read without
pickle. Every size is checked against what the server expects before decoding.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fsl_sage_flwr.core.devices import AUTOCAST_CHOICES
from fsl_sage_flwr.core.settings import (
    check_types,
    record_config,
    record_from_config,
    require,
    require_at_least,
    require_choice,
    require_non_negative,
    require_positive,
    setting,
)
from fsl_sage_flwr.transport.compression import (
    UPLOAD_DTYPES,
    decode_activations,
    encode_activations,
    upload_encoding,
)

ARRAYS_KEY = "arrays"
AUX_KEY = "aux"
CONFIG_KEY = "config"
SMASHED_KEY = "smashed"
METRICS_KEY = "metrics"
GRAD_KEY = "grad"
# Flower's legacy ``fit`` layout (``flwr.compat``), which a NumPyClient reads and writes.
REQUEST_ARRAYS_KEY = "fitins.parameters"
REQUEST_CONFIG_KEY = "fitins.config"
REPLY_ARRAYS_KEY = "fitres.parameters"
REPLY_NUM_EXAMPLES_KEY = "fitres.num_examples"
REPLY_METRICS_KEY = "fitres.metrics"
REPLY_STATUS_KEY = "fitres.status"
# Config keys of a request.
SERVER_ROUND_KEY = "server-round"
WARMUP_KEY = "warmup"
AUX_INCLUDED_KEY = "aux-included"
STEP_KEY = "step"
# Metric keys of a reply.
PARTITION_ID_KEY = "partition-id"
NUM_EXAMPLES_KEY = "num-examples"
LOCAL_STEPS_KEY = "local-steps"
PEAK_MEMORY_KEY = "peak-memory-bytes"
NUM_BATCHES_KEY = "num-batches"
# Prefix of the auxiliary model's arrays in a request.
AUX_PREFIX = "aux."
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
    return {name: ArraySpec(tuple(t.shape), str(t.detach().cpu().numpy().dtype)) for name, t in state_dict.items()}


def check_model_record(record: ArrayRecord, spec: Mapping[str, ArraySpec]) -> None:
    """Raise MalformedReplyError unless ``record`` matches ``spec`` exactly and is finite."""
    missing = sorted(set(spec) - set(record.keys()))
    extra = sorted(set(record.keys()) - set(spec))
    if missing or extra:
        raise MalformedReplyError(
            f"model arrays differ from the expected keys (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    for name, expected in spec.items():
        values = load_array(name, record[name], expected)
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            raise MalformedReplyError(f"model array '{name}' holds NaN or inf")


def load_array(name: str, array: Array, expected: ArraySpec) -> np.ndarray:
    """Deserialise one received array after checking it is what ``expected`` says.

    The declared shape and dtype are checked first, then :func:`_read_npy` bounds
    the raw size and checks the ``.npy`` header and the decoded array, since
    Flower does not tie an array's bytes to its declared header.
    """
    _check_array_header(name, tuple(array.shape), str(array.dtype), expected)
    return _read_npy(name, array, expected)


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
    return split_upload(z, y, sizes, num_classes=num_classes, max_batch=max_batch if max_batch is not None else n)


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
    return _strict_int(value, key)


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


def _check_array_header(name: str, shape: tuple[int, ...], dtype: str, expected: ArraySpec) -> None:
    if tuple(shape) != tuple(expected.shape):
        raise MalformedReplyError(f"array '{name}' has shape {tuple(shape)}, expected {expected.shape}")
    if dtype != expected.dtype:
        raise MalformedReplyError(f"array '{name}' has dtype {dtype}, expected {expected.dtype}")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class LocalTraining:
    """The local-training settings every client must obey.

    The strategy holds them, sends them in every train config and bounds each
    reply by them, so a client never trains with other values than the server
    checks against. These defaults are the app's (``RunSettings`` takes them,
    ``pyproject.toml`` repeats them): B = 16 for the small digits set (the paper,
    Nair et al., ICML 2025, uses 256), E = 1, q = 5, Adam with learning rate
    1e-3 and weight decay 1e-4.

    Attributes
    ----------
    batch_size : int
        Local minibatch size B (at least 2: BatchNorm needs two samples).
    local_epochs : int
        Local epochs E per round.
    upload_interval : int
        q: keep ``(z, y)`` for upload every q-th local step.
    lr, weight_decay : float
        Adam settings of the client models (and of the server model).
    keep_optimizer_state : bool
        Clients keep their Adam state across rounds in ``Context.state``.
    seed : int
        Seeds the clients' batches and initialisation (with round and partition).
    upload_dtype : str
        Encoding of the uploaded activations: ``float32`` (the paper), ``float16``,
        ``bfloat16`` or ``int8`` with a per-channel scale
        (:mod:`fsl_sage_flwr.transport.compression`).
    autocast : str
        ``off`` (float32) or ``bfloat16``: the precision of training forward
        passes, on clients and server alike (:func:`fsl_sage_flwr.core.devices.autocast`).
    """

    batch_size: int = setting("batch-size", 16, "local minibatch size B (at least 2: BatchNorm needs two samples)")
    local_epochs: int = setting("local-epochs", 1, "local epochs E per round")
    upload_interval: int = setting("upload-interval", 5, "q: keep (z, y) for upload every q-th local step")
    lr: float = setting("lr", 1e-3, "Adam learning rate of client and server models")
    weight_decay: float = setting("weight-decay", 1e-4, "Adam weight decay")
    keep_optimizer_state: bool = setting("keep-optimizer-state", False, "keep client Adam state across rounds")
    seed: int = setting("seed", 0, "seed of data split, models, batches and sampling")
    upload_dtype: str = setting(
        "upload-dtype",
        "float32",
        "FSL-SAGE/CSE-FSL: encoding of uploaded activations: float32, float16, bfloat16, int8",
    )
    autocast: str = setting("autocast", "off", "precision of training forward passes: off or bfloat16")

    def __post_init__(self) -> None:
        check_types(self)
        require(self.batch_size >= 2, self, "batch_size", ">= 2 (BatchNorm needs two samples)")
        require_at_least(self, 1, "local_epochs", "upload_interval")
        require_at_least(self, 0, "seed")
        require_positive(self, "lr")
        require_non_negative(self, "weight_decay")
        require_choice(self, "upload_dtype", UPLOAD_DTYPES)
        require_choice(self, "autocast", AUTOCAST_CHOICES)

    def to_config(self) -> dict[str, bool | int | float | str]:
        """Return the settings as train-config entries."""
        return record_config(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LocalTraining:
        """Read the settings a strategy sent; raise ValueError naming a missing or bad key."""
        return record_from_config(
            cls,
            config,
            origin="train config",
            hint=": serve this client with a strategy of fsl_sage_flwr, which sends the local-training settings "
            "every round",
        )

    def max_uploaded(self, num_examples: int) -> int:
        """The most samples a client of ``num_examples`` can upload in one round."""
        steps = self.local_epochs * math.ceil(num_examples / self.batch_size)
        return math.ceil(steps / self.upload_interval) * self.batch_size


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class TrainRequest:
    """A train request as a client reads it: named arrays and settings."""

    server_round: int
    training: LocalTraining
    warmup: bool
    shared: dict[str, np.ndarray]
    aux: dict[str, np.ndarray] | None


def request_content(
    shared: ArrayRecord,
    *,
    server_round: int,
    training: LocalTraining,
    aux: ArrayRecord | None = None,
    warmup: bool = False,
) -> RecordDict:
    """Build a train request in Flower's ``fit`` layout (see the module docstring)."""
    arrays = {name: shared[name] for name in shared.keys()}
    if aux is not None:
        arrays.update({AUX_PREFIX + name: aux[name] for name in aux.keys()})
    config = {
        **training.to_config(),
        SERVER_ROUND_KEY: server_round,
        WARMUP_KEY: warmup,
        AUX_INCLUDED_KEY: aux is not None,
    }
    return RecordDict({REQUEST_ARRAYS_KEY: ArrayRecord(array_dict=arrays), REQUEST_CONFIG_KEY: ConfigRecord(config)})


def decode_request(
    parameters: Sequence[np.ndarray],
    config: Mapping[str, Any],
    *,
    shared_keys: Sequence[str],
    aux_keys: Sequence[str] = (),
) -> TrainRequest:
    """Name the flat arrays a NumPyClient receives; raise ValueError on a mismatch."""
    aux_included = bool(config.get(AUX_INCLUDED_KEY, False))
    expected = len(shared_keys) + (len(aux_keys) if aux_included else 0)
    if len(parameters) != expected:
        raise ValueError(
            f"request carries {len(parameters)} arrays, expected {expected} "
            f"({len(shared_keys)} of the shared model{' and the auxiliary model' if aux_included else ''})"
        )
    shared = dict(zip(shared_keys, parameters[: len(shared_keys)]))
    aux = dict(zip(aux_keys, parameters[len(shared_keys) :])) if aux_included else None
    if SERVER_ROUND_KEY not in config:
        raise ValueError(f"train config lacks '{SERVER_ROUND_KEY}'")
    return TrainRequest(
        server_round=int(config[SERVER_ROUND_KEY]),
        training=LocalTraining.from_config(config),
        warmup=bool(config.get(WARMUP_KEY, False)),
        shared=shared,
        aux=aux,
    )


# --------------------------------------------------------------------------- replies


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
    num_classes: int
    training: LocalTraining
    max_examples: int


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
        raise MalformedReplyError(f"reply holds records {sorted(content.keys())}, expected {sorted(expected)}")
    status = content.config_records.get(REPLY_STATUS_KEY)
    if status is None or status.get("code") != 0:
        message = status.get("message", "") if status is not None else "missing"
        raise MalformedReplyError(f"client reports failure: {str(message)[:200]}")
    num_examples = _strict_int(
        content.metric_records.get(REPLY_NUM_EXAMPLES_KEY, {}).get("num_examples"), "num-examples"
    )
    if not 1 <= num_examples <= bounds.max_examples:
        raise MalformedReplyError(f"num-examples {num_examples} outside [1, {bounds.max_examples}]")
    metrics = content.config_records.get(REPLY_METRICS_KEY)
    if metrics is None or not set(metrics) <= _REPLY_METRICS or PARTITION_ID_KEY not in metrics:
        raise MalformedReplyError(f"reply metrics must be {sorted(_REPLY_METRICS)} with '{PARTITION_ID_KEY}'")
    values = {key: _strict_int(value, key) for key, value in metrics.items()}
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
    decoded = {name: _read_npy(name, array, spec) for (name, spec), array in zip(specs, arrays)}
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
    z = _read_npy("z", z_arr, None, max_bytes=max_samples * math.prod(bounds.cut_shape) * encoding.itemsize)
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
        scale = _read_npy("z-scale", arrays[1], ArraySpec((bounds.cut_shape[0],), "float32"))
        if not np.all(np.isfinite(scale)) or np.any(scale < 0):
            raise MalformedReplyError("array 'z-scale' must hold finite scales >= 0")
    z = decode_activations(z, scale, encoding.name)
    y = _read_npy("y", y_arr, ArraySpec((n,), "int64"))
    sizes = _read_npy("batch-sizes", sizes_arr, None, max_bytes=8 * (n // 2))
    if sizes.ndim != 1 or sizes.dtype != np.int64:
        raise MalformedReplyError(f"array 'batch-sizes' must be an int64 vector, got {sizes.dtype} {sizes.shape}")
    return split_upload(z, y, sizes, num_classes=bounds.num_classes, max_batch=bounds.training.batch_size)


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


def _read_npy(name: str, array: Array, expected: ArraySpec | None, *, max_bytes: int | None = None) -> np.ndarray:
    """Decode one ``.npy`` payload after bounding its size and reading its header.

    The header is checked against ``expected`` before the body is decoded, so
    nothing large or foreign is materialised; pickled (object) arrays are refused.
    """
    if not isinstance(array, Array) or array.stype != "numpy.ndarray":
        raise MalformedReplyError(
            f"array '{name}' is not a numpy array ({getattr(array, 'stype', type(array).__name__)})"
        )
    if expected is not None:
        max_bytes = math.prod(expected.shape) * np.dtype(expected.dtype).itemsize
    limit = (max_bytes or 0) + _NPY_HEADER_BYTES
    if len(array.data) > limit:
        raise MalformedReplyError(f"array '{name}' carries {len(array.data)} bytes, more than {limit}")
    try:
        stream = io.BytesIO(array.data)
        version = np.lib.format.read_magic(stream)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(stream)
        if expected is not None:
            _check_array_header(name, shape, str(dtype), expected)
        if dtype.hasobject:
            raise MalformedReplyError(f"array '{name}' holds Python objects")
        values = np.lib.format.read_array(io.BytesIO(array.data), allow_pickle=False)
    except MalformedReplyError:
        raise
    except Exception as err:  # any decoding failure is the sender's fault
        raise MalformedReplyError(f"array '{name}' does not decode: {type(err).__name__}") from err
    if expected is not None:
        _check_array_header(f"{name} (decoded)", values.shape, str(values.dtype), expected)
    return values


def _strict_int(value: Any, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedReplyError(f"'{key}' must be an integer, got {type(value).__name__}")
    return value
