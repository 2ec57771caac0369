"""Tests of the aux-size helper: every variant measured, the budget and the tolerance rule obeyed."""

from __future__ import annotations

import pytest
import torch

from fsl_sage_flwr import choose_aux_variant
from fsl_sage_flwr.core.models import build_split_model

VARIANTS = ("linear", "half", "default", "full")


def _setup():
    torch.manual_seed(0)
    split = build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8))
    z = torch.randn(40, *split.cut_shape)
    y = torch.arange(40) % 10

    def build_aux(variant: str) -> torch.nn.Module:
        return build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8), aux_variant=variant).aux

    return build_aux, split.server, z, y


def test_every_variant_is_measured_and_the_choice_follows_the_rule():
    # Prepare
    build_aux, server, z, y = _setup()
    before = {k: v.clone() for k, v in server.state_dict().items()}
    # Execute
    choice = choose_aux_variant(build_aux, VARIANTS, server, z, y, epochs=3, tolerance=0.05)
    # Assert: one entry per variant, growing in size; the choice is the smallest within tolerance
    by_name = {c.variant: c for c in choice.candidates}
    assert list(by_name) == list(VARIANTS)
    assert by_name["linear"].client_bytes < by_name["half"].client_bytes < by_name["default"].client_bytes
    assert all(-1.0 <= c.cosine <= 1.0 and c.server_bytes > c.client_bytes for c in choice.candidates)
    best = max(c.cosine for c in choice.candidates)
    good = [c for c in choice.candidates if c.cosine >= best - 0.05]
    assert choice.variant == min(good, key=lambda c: c.client_bytes).variant
    assert "chosen" in choice.table()
    for name, value in server.state_dict().items():  # the server model is left as it was
        torch.testing.assert_close(value, before[name])


def test_a_zero_tolerance_picks_the_best_and_a_budget_excludes_larger_variants():
    # Prepare
    build_aux, server, z, y = _setup()
    # Execute
    exact = choose_aux_variant(build_aux, VARIANTS, server, z, y, epochs=3, tolerance=0.0)
    sizes = {c.variant: c.client_bytes for c in exact.candidates}
    budget = sizes["half"]
    limited = choose_aux_variant(build_aux, VARIANTS, server, z, y, epochs=3, tolerance=0.0, memory_budget_bytes=budget)
    # Assert
    assert exact.variant == max(exact.candidates, key=lambda c: c.cosine).variant
    fitting = [c for c in limited.candidates if c.client_bytes <= budget]
    assert limited.variant == max(fitting, key=lambda c: c.cosine).variant
    assert sizes[limited.variant] <= budget


def test_no_variant_within_the_budget_is_an_error_naming_the_smallest():
    build_aux, server, z, y = _setup()
    with pytest.raises(ValueError, match="no aux variant fits 10 bytes; the smallest, 'linear'"):
        choose_aux_variant(build_aux, VARIANTS, server, z, y, epochs=1, memory_budget_bytes=10)


def test_too_few_samples_are_refused():
    build_aux, server, z, y = _setup()
    with pytest.raises(ValueError, match="fewer than 2"):
        choose_aux_variant(build_aux, VARIANTS, server, z[:3], y[:3], epochs=1)
