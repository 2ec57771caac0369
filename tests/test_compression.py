"""Tests of compressed uploads: the encodings, the wire contract that reads them, and a real run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fsl_sage_flwr.app.client_app import app as client_app
from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.app.results import read_results
from fsl_sage_flwr.app.server_app import app as server_app
from fsl_sage_flwr.transport.compression import (
    UPLOAD_DTYPES,
    decode_activations,
    encode_activations,
    upload_encoding,
)
from fsl_sage_flwr.transport.errors import MalformedReplyError
from fsl_sage_flwr.transport.local_training import LocalTraining
from fsl_sage_flwr.transport.replies import ReplyBounds, TrainReply, parse_train_reply
from fsl_sage_flwr.transport.uploads import pack_uploads
from simulations.in_process import run_in_process
from simulations.testing import app_config, fit_reply_content

CUT = (4, 3, 3)


def _activations(n: int = 12, seed: int = 0) -> torch.Tensor:
    # Channels of very different ranges: a per-channel scale must keep the small ones.
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, *CUT), generator=g)
    return z * torch.tensor([100.0, 1.0, 0.01, 0.0]).view(1, -1, 1, 1)


def _bounds(upload_dtype: str) -> ReplyBounds:
    training = LocalTraining(batch_size=6, upload_interval=1, upload_dtype=upload_dtype)
    return ReplyBounds(cut_shape=CUT, num_classes=10, training=training, max_examples=100)


def _warm_up_reply(arrays: tuple[np.ndarray, ...]) -> object:
    return fit_reply_content(TrainReply(partition_id=0, num_examples=12, smashed=arrays))


@pytest.mark.parametrize(
    ("name", "relative_tolerance", "bytes_per_value"),
    [("float32", 0.0, 4), ("float16", 1e-3, 2), ("bfloat16", 8e-3, 2), ("int8", None, 1)],
)
def test_each_encoding_decodes_close_to_the_activations_in_fewer_bytes(name, relative_tolerance, bytes_per_value):
    # Prepare
    z = _activations()
    # Execute
    arrays = encode_activations(z, name)
    decoded = decode_activations(arrays[0], arrays[1] if len(arrays) > 1 else None, name)
    # Assert: bytes per value as promised, values as close as the format allows
    assert arrays[0].nbytes == z.numel() * bytes_per_value
    assert decoded.dtype == np.float32 and decoded.shape == tuple(z.shape)
    if relative_tolerance is not None:
        np.testing.assert_allclose(decoded, z.numpy(), rtol=relative_tolerance, atol=0)
    else:
        # int8: the error of every value is at most half its channel's step
        step = z.abs().amax(dim=(0, 2, 3)).numpy() / 127
        error = np.abs(decoded - z.numpy()).max(axis=(0, 2, 3))
        assert np.all(error <= step / 2 + 1e-6 * step)
        assert np.all(decoded[:, 3] == 0)  # an all-zero channel stays exact


def test_an_unknown_encoding_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="float32.*int8"):
        upload_encoding("int4")
    with pytest.raises(ValueError, match="upload-dtype"):
        LocalTraining(upload_dtype="float64")


@pytest.mark.parametrize("name", UPLOAD_DTYPES)
def test_a_reply_in_the_runs_encoding_parses_to_the_decoded_batches(name):
    # Prepare: two uploaded batches of 3 (a warm-up reply holds one batch's worth), packed as a client does
    z = _activations(n=6)
    y = torch.arange(6)
    packed = pack_uploads([(z[:3], y[:3]), (z[3:], y[3:])], CUT, name)
    # Execute
    parsed = parse_train_reply(7, _warm_up_reply(packed), shared_spec=None, bounds=_bounds(name))
    # Assert
    assert [zb.shape[0] for zb, _ in parsed.upload.batches] == [3, 3]
    received = torch.cat([zb for zb, _ in parsed.upload.batches])
    expected = decode_activations(packed[0], packed[1] if name == "int8" else None, name)
    torch.testing.assert_close(received, torch.from_numpy(expected))


@pytest.mark.parametrize(
    ("sent", "expected", "reason"),
    [
        ("float32", "int8", "reply carries 3 arrays, expected 4"),
        ("int8", "float32", "reply carries 4 arrays, expected 3"),
        ("float16", "bfloat16", "dtype float16.*expected uint16"),
        ("float32", "float16", "dtype float32.*expected float16"),
    ],
)
def test_a_reply_in_another_encoding_is_refused(sent, expected, reason):
    packed = pack_uploads([(_activations()[:6], torch.arange(6))], CUT, sent)
    with pytest.raises(MalformedReplyError, match=reason):
        parse_train_reply(7, _warm_up_reply(packed), shared_spec=None, bounds=_bounds(expected))


@pytest.mark.parametrize(
    ("scale", "reason"),
    [
        (np.array([1.0, np.nan, 1.0, 1.0], np.float32), "finite scales"),
        (np.array([1.0, -1.0, 1.0, 1.0], np.float32), "finite scales"),
        (np.array([3e38, 1.0, 1.0, 1.0], np.float32), "NaN or inf"),  # decodes beyond float32
        (np.array([1.0, 1.0, 1.0], np.float32), "shape"),
        (np.array([1.0, 1.0, 1.0, 1.0], np.float64), "dtype"),
    ],
)
def test_an_int8_upload_with_a_bad_scale_is_refused(scale, reason):
    values, _, y, sizes = pack_uploads([(_activations()[:6], torch.arange(6))], CUT, "int8")
    values = np.full_like(values, 127)
    with pytest.raises(MalformedReplyError, match=reason):
        parse_train_reply(7, _warm_up_reply((values, scale, y, sizes)), shared_spec=None, bounds=_bounds("int8"))


def test_run_config_refuses_an_unknown_upload_dtype(tmp_path):
    with pytest.raises(ValueError, match="'upload-dtype' must be one of .*got 'fp8'"):
        RunSettings.from_run_config(app_config(tmp_path, upload_dtype="fp8"))


@pytest.mark.e2e  # two in-process FSL-SAGE runs of 4 rounds
def test_int8_uploads_send_fewer_bytes_up_and_still_learn(tmp_path):
    # Prepare: the same run, full and int8 uploads
    rows = {}
    for name in ("float32", "int8"):
        config = app_config(tmp_path / name, num_server_rounds=4, min_available_nodes=3, upload_dtype=name)
        # Execute
        run_in_process(server_app, client_app, config, num_nodes=3)
        rows[name] = read_results(tmp_path / name / "run" / "results.jsonl")
    # Assert: the ledger sees the smaller uploads; the run still learns
    up = {name: sum(row["bytes_up"] for row in rows[name]) for name in rows}
    down = {name: sum(row["bytes_down"] for row in rows[name]) for name in rows}
    assert up["int8"] < 0.75 * up["float32"], up
    assert down["int8"] == down["float32"]
    assert rows["int8"][-1]["accuracy"] > 0.5
    assert abs(rows["int8"][-1]["accuracy"] - rows["float32"][-1]["accuracy"]) < 0.1
