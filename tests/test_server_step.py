"""Tests of the guarded server step and of the activation scale."""

from __future__ import annotations

import copy

import pytest
import torch

from fsl_sage_flwr.core.estimation import UnsafeStepError, server_step
from fsl_sage_flwr.core.models import build_split_model
from fsl_sage_flwr.core.training import make_adam
from fsl_sage_flwr.transport.errors import MalformedReplyError
from fsl_sage_flwr.transport.guard import ActivationScale, UploadLimits


def _server():
    torch.manual_seed(0)
    server = build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8)).server
    optimizer = make_adam(server, 1e-3, 1e-4)
    g = torch.Generator().manual_seed(1)
    z, y = torch.randn(8, 16, 2, 2, generator=g), torch.randint(0, 10, (8,), generator=g)
    server_step(server, optimizer, z, y)  # the optimizer has state to keep
    return server, optimizer, z, y


@pytest.mark.parametrize("value", [1e30, 3e38, float("nan"), float("inf")])
def test_a_step_that_would_leave_non_finite_state_is_skipped_and_changes_nothing(value):
    # Prepare
    server, optimizer, z, y = _server()
    model_before = copy.deepcopy(server.state_dict())
    optimizer_before = copy.deepcopy(optimizer.state_dict())
    z = z.clone()
    z[0, 0, 0, 0] = value
    # Execute
    with pytest.raises(UnsafeStepError):
        server_step(server, optimizer, z, y)
    # Assert: weights, BatchNorm statistics and Adam state bit for bit as before
    for name, tensor in server.state_dict().items():
        assert torch.equal(tensor, model_before[name]), name
    for index, slots in optimizer.state_dict()["state"].items():
        for key, tensor in slots.items():
            assert torch.equal(tensor, optimizer_before["state"][index][key]), (index, key)
    assert all(p.grad is None for p in server.parameters())


def test_a_finite_step_trains():
    # Prepare
    server, optimizer, z, y = _server()
    before = copy.deepcopy(server.state_dict())
    # Execute
    loss = server_step(server, optimizer, z, y)
    # Assert
    assert loss > 0
    assert not torch.equal(server.state_dict()["0.weight"], before["0.weight"])


def test_activation_scale_refuses_a_batch_beyond_factor_times_its_median_after_the_first():
    # Prepare: accepted batches peak at 2, 3 and 4 (median 3)
    scale = ActivationScale(UploadLimits(max_abs=1e4, factor=10.0, window=8, min_scale=1.0))
    batch = lambda peak: (torch.tensor([[peak, 0.5]]), torch.tensor([0]))  # noqa: E731
    # Assert: before any accepted batch only the cap applies
    scale.check([batch(9e3)])
    with pytest.raises(MalformedReplyError, match="above the bound"):
        scale.check([batch(2e4)])
    # Execute
    scale.accept([batch(2.0), batch(3.0), batch(-4.0)])
    # Assert: 10 x 3 = 30 is the bound now; checking changes nothing
    scale.check([batch(30.0)])
    with pytest.raises(MalformedReplyError, match="10 x running scale 3"):
        scale.check([batch(2.0), batch(-31.0)])
    assert scale.snapshot() == (2.0, 3.0, 4.0)
