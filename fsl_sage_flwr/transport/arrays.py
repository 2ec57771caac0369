"""The array codec of the message contract: ``.npy`` payloads read without pickle, sizes bounded first.

Only numpy arrays and scalars travel; arrays are ``.npy`` bytes read without
pickle. Every size is checked against what the server expects before decoding.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from fsl_sage_flwr.transport.errors import MalformedReplyError

# Room for the .npy header in front of an array's raw bytes.
_NPY_HEADER_BYTES = 4096


@dataclass(frozen=True)
class ArraySpec:
    """Expected shape and dtype of one named array."""

    shape: tuple[int, ...]
    dtype: str


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

    The declared shape and dtype are checked first, then :func:`read_npy` bounds
    the raw size and checks the ``.npy`` header and the decoded array, since
    Flower does not tie an array's bytes to its declared header.
    """
    _check_array_header(name, tuple(array.shape), str(array.dtype), expected)
    return read_npy(name, array, expected)


def to_array(values: np.ndarray) -> Array:
    """Wrap a numpy array for a Flower ArrayRecord (contiguous, no pickle)."""
    return Array(np.ascontiguousarray(values))


def _check_array_header(name: str, shape: tuple[int, ...], dtype: str, expected: ArraySpec) -> None:
    if tuple(shape) != tuple(expected.shape):
        raise MalformedReplyError(f"array '{name}' has shape {tuple(shape)}, expected {expected.shape}")
    if dtype != expected.dtype:
        raise MalformedReplyError(f"array '{name}' has dtype {dtype}, expected {expected.dtype}")


def read_npy_header(name: str, array: Array) -> tuple[tuple[int, ...], str]:
    """The shape and dtype a ``.npy`` payload's header declares, read without its body."""
    if not isinstance(array, Array) or array.stype != "numpy.ndarray":
        raise MalformedReplyError(
            f"array '{name}' is not a numpy array ({getattr(array, 'stype', type(array).__name__)})"
        )
    try:
        stream = io.BytesIO(array.data[:_NPY_HEADER_BYTES])
        version = np.lib.format.read_magic(stream)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(stream)
    except Exception as err:  # any decoding failure is the sender's fault
        raise MalformedReplyError(f"array '{name}' does not decode: {type(err).__name__}") from err
    return tuple(int(d) for d in shape), str(dtype)


def read_npy(
    name: str, array: Array, expected: ArraySpec | None, *, max_bytes: int | None = None, dtype: str | None = None
) -> np.ndarray:
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
        shape, _, declared_dtype = reader(stream)
        if expected is not None:
            _check_array_header(name, shape, str(declared_dtype), expected)
        if dtype is not None and str(declared_dtype) != dtype:
            # Named before the size check: another encoding is the clearer reason.
            raise MalformedReplyError(f"array '{name}' has dtype {declared_dtype}, expected {dtype}")
        if declared_dtype.hasobject:
            raise MalformedReplyError(f"array '{name}' holds Python objects")
        declared = math.prod(shape) * declared_dtype.itemsize
        _check_declared_size(name, declared, len(array.data) - stream.tell(), max_bytes)
        values = np.lib.format.read_array(io.BytesIO(array.data), allow_pickle=False)
    except MalformedReplyError:
        raise
    except Exception as err:  # any decoding failure is the sender's fault
        raise MalformedReplyError(f"array '{name}' does not decode: {type(err).__name__}") from err
    if expected is not None:
        _check_array_header(f"{name} (decoded)", values.shape, str(values.dtype), expected)
    return values


def _check_declared_size(name: str, declared: int, body: int, max_bytes: int | None) -> None:
    """Refuse a header whose declared size is over the bound or is not the body's: numpy would reserve it."""
    if max_bytes is not None and declared > max_bytes:
        raise MalformedReplyError(f"array '{name}' declares {declared} bytes in its header, more than {max_bytes}")
    if declared != body:
        raise MalformedReplyError(f"array '{name}' declares {declared} bytes in its header but carries {body}")
