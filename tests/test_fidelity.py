"""Tests of the gradient-fidelity measure and its live recording by the FSL-SAGE server."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fsl_sage_flwr.core.fidelity import gradient_fidelity
from fsl_sage_flwr.core.models import build_split_model


def _tiny_split():
    torch.manual_seed(0)
    return build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8))


def _true_gradient(head, z, y):
    head.train()
    z = z.clone().requires_grad_(True)
    F.cross_entropy(head(z), y).backward()
    return z.grad


def test_fidelity_equals_a_direct_computation():
    # Prepare
    split = _tiny_split()
    g = torch.Generator().manual_seed(3)
    z, y = torch.randn(12, 16, 2, 2, generator=g), torch.randint(0, 10, (12,), generator=g)
    g_aux = _true_gradient(copy.deepcopy(split.aux), z, y)
    g_server = _true_gradient(copy.deepcopy(split.server), z, y)
    expected_cosine = float(F.cosine_similarity(g_aux.flatten(1), g_server.flatten(1), dim=1).mean())
    expected_error = float((g_aux - g_server).norm() / g_server.norm())
    # Execute
    fidelity = gradient_fidelity(split.aux, split.server, z, y)
    # Assert
    assert fidelity.cosine == pytest.approx(expected_cosine, rel=1e-5)
    assert fidelity.relative_error == pytest.approx(expected_error, rel=1e-5)
    assert fidelity.num_samples == 12


def test_fidelity_is_perfect_for_a_copy_and_leaves_both_models_untouched():
    # Prepare
    split = _tiny_split()
    z, y = torch.randn(8, 16, 2, 2), torch.randint(0, 10, (8,))
    split.server.eval()
    before = copy.deepcopy(split.server.state_dict())
    # Execute
    fidelity = gradient_fidelity(copy.deepcopy(split.server), split.server, z, y)
    # Assert: BatchNorm statistics, weights, mode and grads as they were
    assert fidelity.cosine == pytest.approx(1.0, abs=1e-6)
    assert fidelity.relative_error == pytest.approx(0.0, abs=1e-6)
    for name, value in split.server.state_dict().items():
        torch.testing.assert_close(value, before[name])
    assert not split.server.training
    assert all(p.grad is None for p in split.server.parameters())


def test_fidelity_refuses_a_single_sample():
    split = _tiny_split()
    with pytest.raises(ValueError, match="at least 2"):
        gradient_fidelity(split.aux, split.server, torch.randn(1, 16, 2, 2), torch.tensor([0]))


def test_plot_series_takes_rounds_with_fidelity_and_marks_alignment_rounds():
    # Prepare: round 0 has no uploads, round 2 aligned
    from simulations.plot_fidelity import fidelity_series

    rows = [
        {"round": 0},
        {"round": 1, "fidelity_cosine_mean": 0.1, "fidelity_cosine_min": 0.0},
        {"round": 2, "fidelity_cosine_mean": 0.2, "fidelity_cosine_min": 0.1, "alignments": 2},
    ]
    # Execute
    rounds, means, minima, aligned = fidelity_series(rows)
    # Assert
    assert (rounds, means, minima, aligned) == ([1, 2], [0.1, 0.2], [0.0, 0.1], [2])
