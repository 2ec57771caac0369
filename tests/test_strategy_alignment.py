"""Tests of FSL-SAGE's alignment in the strategy: stacked alignment, gradient fidelity, adaptive alignment."""

from __future__ import annotations

import copy
import dataclasses
import logging

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord

from fsl_sage_flwr.core.fidelity import gradient_fidelity
from fsl_sage_flwr.strategies import AlignmentSettings, FSLSage
from simulations.testing import (
    NODES,
    ScriptedGrid,
    constant_weights,
    reply_from,
    smashed_batches,
    train_reply_content,
    two_node_fsl_sage,
    warm_up_two_nodes,
)


def _stacked_strategy_run(stacked: bool, caplog):
    """Warm up two nodes, then one alignment round in which only node 202 replies."""
    strategy, split = two_node_fsl_sage(align_interval=1)
    strategy.alignment = dataclasses.replace(strategy.alignment, stacked=stacked)
    warm_up_two_nodes(strategy, split)
    caplog.clear()  # the warm-up aligns every aux; only the round's log lines count
    with caplog.at_level(logging.INFO, logger="flwr"):
        strategy.aggregate_train(1, [reply_from(202, train_reply_content(202, constant_weights(split, 1.0), 20))])
    return strategy


def test_strategy_stacked_alignment_gives_the_one_by_one_auxes_and_logs_the_skip(caplog):
    # Execute: the same run aligned one by one and stacked
    one_by_one = _stacked_strategy_run(False, caplog)
    stacked = _stacked_strategy_run(True, caplog)

    # Assert: node 202's aux matches; node 101 (unchanged buffer) was skipped, with a log line
    for name, value in one_by_one.client_state(NODES[202]).aux.state_dict().items():
        torch.testing.assert_close(stacked.client_state(NODES[202]).aux.state_dict()[name], value, rtol=1e-3, atol=1e-3)
    status = stacked.client_status(NODES[202])
    assert status.aux_pending and not status.buffer_changed
    messages = [r.getMessage() for r in caplog.records]
    assert "skipped aligning aux of partition 0: buffer unchanged" in messages
    assert not any("aligned aux of partition 0" in m for m in messages)
    assert any("aligned aux of partition 1" in m for m in messages)


def test_server_records_fidelity_per_partition_against_the_model_before_the_rounds_training():
    # Prepare: warmed-up server; the expected value uses the server model before round 1
    strategy, split = two_node_fsl_sage()
    warm_up_two_nodes(strategy, split)
    strategy.pop_alignment_summary()  # drop the warm-up's measurements
    server_before = copy.deepcopy(strategy.server_model)
    expected = {}
    for partition in NODES.values():
        z, y, _ = smashed_batches(partition)
        expected[str(partition)] = gradient_fidelity(
            copy.deepcopy(strategy.client_state(partition).aux),
            server_before,
            torch.from_numpy(z[:8]),
            torch.from_numpy(y[:8]),
        )
    # Execute
    strategy.aggregate_train(
        1, [reply_from(n, train_reply_content(n, constant_weights(split, 1.0), 20)) for n in NODES]
    )
    summary = strategy.pop_alignment_summary()
    # Assert
    by_partition = summary["fidelity_by_partition"]
    assert sorted(by_partition) == ["0", "1"]
    for partition, want in expected.items():  # the second client too: same model as the first
        assert by_partition[partition]["cosine"] == pytest.approx(want.cosine, rel=1e-5)
        assert by_partition[partition]["relative_error"] == pytest.approx(want.relative_error, rel=1e-5)
    cosines = [v["cosine"] for v in by_partition.values()]
    assert summary["fidelity_cosine_min"] == pytest.approx(min(cosines))
    assert summary["fidelity_cosine_mean"] == pytest.approx(np.mean(cosines))


def test_fidelity_samples_zero_turns_the_measurement_off():
    # Prepare
    strategy, split = two_node_fsl_sage()
    strategy.fidelity_samples = 0
    warm_up_two_nodes(strategy, split)
    # Execute
    strategy.aggregate_train(
        1, [reply_from(n, train_reply_content(n, constant_weights(split, 1.0), 20)) for n in NODES]
    )
    # Assert
    assert not any(key.startswith("fidelity") for key in strategy.pop_alignment_summary())


def _round_one_then_auxes_sent_in_round_two(strategy: FSLSage, split) -> tuple[dict, set[int]]:
    """Run round 1 (both nodes); return its summary and the nodes whose aux round 2 sends."""
    grid = ScriptedGrid(list(NODES), None)
    arrays = ArrayRecord(split.client.state_dict())
    list(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    strategy.pop_alignment_summary()  # drop the warm-up's alignments
    strategy.aggregate_train(
        1, [reply_from(n, train_reply_content(n, constant_weights(split, 1.0), 20)) for n in NODES]
    )
    summary = strategy.pop_alignment_summary()
    messages = strategy.configure_train(2, arrays, ConfigRecord(), grid)
    sent = {m.metadata.dst_node_id for m in messages if m.content.config_records["fitins.config"]["aux-included"]}
    return summary, sent


@pytest.mark.parametrize(("threshold", "aligned"), [(0.0, set()), (1.0, set(NODES))])
def test_adaptive_alignment_aligns_clients_under_the_threshold_between_intervals(threshold, aligned):
    # Prepare: no fixed alignment before round 100; every cosine is under 1.0
    strategy, split = two_node_fsl_sage(align_interval=100, threshold=threshold)
    warm_up_two_nodes(strategy, split)
    # Execute
    summary, sent = _round_one_then_auxes_sent_in_round_two(strategy, split)
    # Assert: the aligned auxes, and only they, travel in round 2
    assert sent == aligned
    assert summary.get("alignments", 0) == len(aligned)
    if threshold:
        assert summary["alignments_triggered"] == len(aligned)


def test_adaptive_alignment_within_a_budget_aligns_the_worst_client_first(caplog):
    # Prepare: a budget of one aux's bytes
    aux_bytes = sum(t.numel() * t.element_size() for t in two_node_fsl_sage()[1].aux.state_dict().values())
    strategy, split = two_node_fsl_sage(align_interval=100, threshold=1.0, budget_bytes=aux_bytes + 1)
    warm_up_two_nodes(strategy, split)
    # Execute
    with caplog.at_level(logging.INFO, logger="flwr"):
        summary, sent = _round_one_then_auxes_sent_in_round_two(strategy, split)
    # Assert: the client of the lower cosine got the one alignment the budget allows
    cosines = {node: summary["fidelity_by_partition"][str(NODES[node])]["cosine"] for node in NODES}
    assert sent == {min(cosines, key=cosines.get)}
    assert summary["alignments_triggered"] == 1 and summary["triggered_align_bytes"] == aux_bytes
    assert "alignment budget of" in caplog.text


def test_adaptive_alignment_needs_a_cosine_threshold_and_a_non_negative_budget():
    with pytest.raises(ValueError, match="set fidelity_samples > 0"):
        FSLSage(
            aux_factory=lambda: torch.nn.Linear(2, 2),
            alignment=AlignmentSettings(threshold=0.3),
            fidelity_samples=0,
            shared_model=torch.nn.Linear(2, 2),
        )
    with pytest.raises(ValueError, match="cosine"):
        AlignmentSettings(threshold=1.5)
    with pytest.raises(ValueError, match="budget"):
        AlignmentSettings(budget_bytes=-1)
