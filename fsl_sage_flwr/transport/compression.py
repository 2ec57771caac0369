"""Encodings of uploaded cut-layer activations: float32, float16, bfloat16 and int8 per channel.

A client encodes the activations it uploads (``z``) with the run's
``upload-dtype``; the server decodes them to float32 before any other use, so the
server model, the alignment buffers and the fidelity measurement all see what the
encoding kept. The byte ledger counts the encoded arrays, since it meters the
transport. Every encoding is plain numpy arrays (numpy has no bfloat16: its bits
travel as ``uint16``):

- ``float32``: ``z`` as is (the paper, Nair et al., ICML 2025).
- ``float16``: half precision, 2 bytes per value; values beyond 65,504 become inf
  and the server drops such an upload as non-finite.
- ``bfloat16``: float32's range with an 8-bit mantissa, 2 bytes per value.
- ``int8``: symmetric linear quantisation with one float32 scale per channel (axis 1
  of ``z``: a convolution's channel, or one feature of a flat cut), 1 byte per value
  plus 4 per channel; the scale array travels right after ``z``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

UPLOAD_DTYPES = ("float32", "float16", "bfloat16", "int8")

_INT8_LEVELS = 127  # symmetric: -127..127, so 0 is exact and the scale is max|z| / 127


@dataclass(frozen=True)
class UploadEncoding:
    """How ``z`` travels: its array dtype, bytes per value and whether a scale array follows.

    Attributes
    ----------
    name : str
        One of :data:`UPLOAD_DTYPES`, the ``upload-dtype`` run-config value.
    wire_dtype : str
        numpy dtype of the ``z`` array on the wire.
    has_scale : bool
        Whether a float32 per-channel scale array follows ``z`` (``int8``).
    """

    name: str
    wire_dtype: str
    has_scale: bool

    @property
    def itemsize(self) -> int:
        """Bytes per activation value on the wire."""
        return np.dtype(self.wire_dtype).itemsize

    @property
    def num_arrays(self) -> int:
        """Arrays that carry ``z``: the values, and the scale where there is one."""
        return 2 if self.has_scale else 1


_ENCODINGS = {
    "float32": UploadEncoding("float32", "float32", False),
    "float16": UploadEncoding("float16", "float16", False),
    "bfloat16": UploadEncoding("bfloat16", "uint16", False),
    "int8": UploadEncoding("int8", "int8", True),
}


def upload_encoding(name: str) -> UploadEncoding:
    """Return the encoding called ``name``; raise ValueError naming the choices."""
    if name not in _ENCODINGS:
        raise ValueError(f"'upload-dtype' must be one of {list(UPLOAD_DTYPES)}, got {name!r}")
    return _ENCODINGS[name]


def encode_activations(z: torch.Tensor, name: str) -> list[np.ndarray]:
    """Encode float activations ``(n, *cut_shape)``; return the arrays that carry them.

    ``[values]``, or ``[values, scale]`` for ``int8``.
    """
    z = z.detach().float().cpu()
    encoding = upload_encoding(name)
    if encoding.name == "float32":
        return [z.numpy().astype(np.float32)]
    if encoding.name == "float16":
        return [z.numpy().astype(np.float16)]
    if encoding.name == "bfloat16":
        return [z.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16).copy()]
    scale = _channel_scale(z)
    shape = (1, -1) + (1,) * (z.dim() - 2)
    values = torch.round(z / scale.clamp_min(torch.finfo(torch.float32).tiny).view(shape))
    return [values.clamp(-_INT8_LEVELS, _INT8_LEVELS).to(torch.int8).numpy(), scale.numpy()]


def decode_activations(values: np.ndarray, scale: np.ndarray | None, name: str) -> np.ndarray:
    """Decode what :func:`encode_activations` made back into float32 activations.

    The caller has checked the arrays' dtypes and shapes (the wire contract does);
    a huge scale may decode to inf, which the contract then refuses as non-finite.
    """
    encoding = upload_encoding(name)
    if encoding.name in ("float32", "float16"):
        return values.astype(np.float32)
    if encoding.name == "bfloat16":
        return torch.from_numpy(values.view(np.int16).copy()).view(torch.bfloat16).float().numpy()
    if scale is None:
        raise ValueError("int8 activations need their per-channel scale")
    shape = (1, -1) + (1,) * (values.ndim - 2)
    with np.errstate(over="ignore"):
        return values.astype(np.float32) * scale.astype(np.float32).reshape(shape)


def _channel_scale(z: torch.Tensor) -> torch.Tensor:
    """One scale per channel (axis 1): the largest magnitude over the rest, over 127."""
    if z.shape[0] == 0:
        return torch.zeros(z.shape[1])
    reduce = [0] + list(range(2, z.dim()))
    return z.abs().amax(dim=reduce) / _INT8_LEVELS
