"""A ``.npy`` header's declared size is checked before numpy reads (and reserves) the body."""

from __future__ import annotations

import io

import numpy as np
import numpy.lib.format
import pytest
from flwr.app import Array

from fsl_sage_flwr.transport.arrays import read_npy
from fsl_sage_flwr.transport.errors import MalformedReplyError


def _npy(shape: tuple[int, ...], body: bytes) -> Array:
    """A hand-made ``.npy`` payload: a float64 header declaring ``shape``, then ``body``."""
    stream = io.BytesIO()
    numpy.lib.format.write_array_header_1_0(stream, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return Array(dtype="float64", shape=tuple(shape), stype="numpy.ndarray", data=stream.getvalue() + body)


@pytest.fixture
def read_array_forbidden(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("read_array ran on a payload that should have been refused")

    monkeypatch.setattr(numpy.lib.format, "read_array", refuse)


def test_a_header_declaring_16_gib_is_refused_before_the_body_is_read(read_array_forbidden):
    # Prepare
    payload = _npy((2**31, 2), b"\0" * 16)
    # Execute
    with pytest.raises(MalformedReplyError) as refused:
        read_npy("z", payload, None, max_bytes=1024)
    # Assert
    assert f"declares {2**31 * 2 * 8} bytes in its header, more than 1024" in str(refused.value)


def test_a_header_declaring_more_than_its_body_is_refused(read_array_forbidden):
    # Prepare
    payload = _npy((64,), b"\0" * 16)
    # Execute
    with pytest.raises(MalformedReplyError) as refused:
        read_npy("z", payload, None, max_bytes=1024)
    # Assert
    assert "declares 512 bytes in its header but carries 16" in str(refused.value)


def test_a_header_matching_its_body_within_the_bound_decodes():
    # Prepare
    values = np.arange(4, dtype=np.float64)
    payload = _npy((4,), values.tobytes())
    # Execute
    decoded = read_npy("z", payload, None, max_bytes=1024)
    # Assert
    np.testing.assert_array_equal(decoded, values)
