"""Tests of SplitSpec's own checks: a split whose parts do not fit is refused when described, naming the part."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fsl_sage_flwr import SplitSpec

CUT = (8, 7, 7)


def _client() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4))


def _head(features: int = 8 * 7 * 7) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(features, 10))


def _spec(**kwargs) -> SplitSpec:
    parts = {"client_model": _client, "server_model": _head, "aux_model": _head, "cut_shape": CUT, "num_classes": 10}
    return SplitSpec(**{**parts, **kwargs})


def test_a_server_model_that_cannot_take_the_cut_is_named_with_the_shapes():
    # Execute / Assert: no testset, only the example input shape
    with pytest.raises(ValueError, match=r"server_model cannot take the client_model's output \(2, 8, 7, 7\): mat1"):
        _spec(server_model=lambda: _head(100), input_shape=(1, 28, 28))


def test_an_aux_model_that_cannot_take_the_cut_is_named_with_the_shapes():
    with pytest.raises(ValueError, match=r"aux_model cannot take the client_model's output \(2, 8, 7, 7\)"):
        _spec(aux_model=lambda: _head(100), input_shape=(1, 28, 28))


def test_a_client_model_that_cannot_take_the_input_shape_is_named_with_it():
    with pytest.raises(ValueError, match=r"client_model cannot take inputs of shape \(3, 28, 28\): .*channels"):
        _spec(input_shape=(3, 28, 28))


def test_a_testset_without_its_channel_axis_is_told_so():
    # Prepare: 28 x 28 images, as a (N, 28, 28) array
    testset = (np.zeros((4, 28, 28), dtype=np.float32), np.zeros(4, dtype=np.int64))
    # Execute / Assert: against the declared input shape, and without one
    with pytest.raises(ValueError, match=r"testset inputs of shape \(28, 28\) per sample lack the channel axis"):
        _spec(testset=testset, input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match=r"inputs of shape \(28, 28\).*lack their channel axis\?"):
        _spec(testset=testset)


def test_the_input_shape_is_taken_from_the_testset_and_a_fitting_split_passes():
    # Prepare
    testset = (np.zeros((4, 1, 28, 28), dtype=np.float32), np.zeros(4, dtype=np.int64))
    state = torch.random.get_rng_state()
    # Execute
    spec = _spec(testset=testset)
    # Assert: inferred, and the check left the caller's RNG alone
    assert spec.input_shape == (1, 28, 28)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_a_bad_input_shape_is_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"input_shape must be positive sizes, got \(0, 28\)"):
        _spec(input_shape=(0, 28))
