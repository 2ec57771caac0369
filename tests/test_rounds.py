"""Tests of the round loop's start-up log."""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord
from flwr.serverapp.strategy import FedAvg

from fsl_sage_flwr.app.rounds import run_rounds


def test_the_loop_logs_the_strategy_summary_before_round_one(caplog):
    # Prepare: a run of zero rounds, so no node is needed
    strategy = FedAvg(fraction_train=0.5)
    # Execute
    with caplog.at_level(logging.INFO, logger="flwr"):
        run_rounds(strategy, None, ArrayRecord(), first_round=1, num_rounds=0)
    # Assert: Flower's start-up lines, then the strategy's own summary
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Starting FedAvg strategy:" in text
    assert "Number of rounds: 0" in text
    assert "Fraction: train (0.50)" in text
