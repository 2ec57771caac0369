"""Tests of the server's bookkeeping: which auxes align when, the byte budget, fidelity summaries, client records."""

from __future__ import annotations

import pytest
import torch

from fsl_sage_flwr.core.alignment import AlignmentSettings
from fsl_sage_flwr.core.alignment_schedule import AlignmentBudget, AlignmentCandidate, plan_alignment
from fsl_sage_flwr.core.checkpoint import ClientStore
from fsl_sage_flwr.core.client_slots import ClientSlots
from fsl_sage_flwr.core.fidelity import Fidelity
from fsl_sage_flwr.core.fidelity_stats import FidelityLog, fidelity_sample
from fsl_sage_flwr.core.server_order import server_step_order

CANDIDATES = [
    AlignmentCandidate(2, buffer_changed=True, cosine=0.1),
    AlignmentCandidate(0, buffer_changed=False, cosine=-0.5),
    AlignmentCandidate(1, buffer_changed=True, cosine=-0.2),
    AlignmentCandidate(3, buffer_changed=True, cosine=None),
]


def test_an_interval_round_aligns_every_changed_buffer_in_partition_order():
    # Execute
    plan = plan_alignment(4, 10, AlignmentSettings(interval=2), CANDIDATES, AlignmentBudget(), lambda: 100)
    # Assert
    assert plan.due == (1, 2, 3) and plan.unchanged == (0,)
    assert plan.triggered == () and plan.over_budget is None


def test_nothing_aligns_after_the_last_round_or_between_intervals_without_a_threshold():
    # Execute
    last = plan_alignment(10, 10, AlignmentSettings(interval=2, threshold=0.5), CANDIDATES, AlignmentBudget(), int)
    between = plan_alignment(3, 10, AlignmentSettings(interval=2), CANDIDATES, AlignmentBudget(), int)
    # Assert
    assert last.due == () and between.due == ()


def test_low_fidelity_triggers_the_worst_changed_clients_first_until_the_budget_is_spent():
    # Prepare: room for one aux of 100 bytes; partition 0 is worst but its buffer is unchanged
    settings = AlignmentSettings(interval=5, threshold=0.5, budget_bytes=150)
    budget = AlignmentBudget()
    # Execute
    plan = plan_alignment(3, None, settings, CANDIDATES, budget, lambda: 100)
    # Assert
    assert plan.due == (1,) and plan.triggered == ((1, -0.2),)
    assert plan.over_budget == 2
    assert budget.spent_bytes == 100 and budget.pop_triggered() == 1 and budget.pop_triggered() == 0


def test_a_zero_budget_means_no_limit():
    # Prepare
    budget = AlignmentBudget(spent_bytes=10**9)
    # Execute
    plan = plan_alignment(3, None, AlignmentSettings(interval=5, threshold=0.5), CANDIDATES, budget, lambda: 100)
    # Assert
    assert plan.due == (1, 2) and plan.over_budget is None


def test_fidelity_log_sums_up_by_partition_and_forgets():
    # Prepare
    log = FidelityLog()
    log.record(1, Fidelity(cosine=0.5, relative_error=1.0, num_samples=8))
    log.record(0, Fidelity(cosine=0.1, relative_error=2.0, num_samples=8))
    log.record(1, Fidelity(cosine=0.7, relative_error=3.0, num_samples=8))
    # Execute
    summary = log.pop_summary()
    # Assert
    assert summary["fidelity_cosine_mean"] == pytest.approx(1.3 / 3)
    assert summary["fidelity_cosine_min"] == pytest.approx(0.1)
    assert summary["fidelity_relative_error_mean"] == pytest.approx(2.0)
    assert list(summary["fidelity_by_partition"]) == ["0", "1"]
    assert summary["fidelity_by_partition"]["1"] == pytest.approx({"cosine": 0.6, "relative_error": 2.0})
    assert log.pop_summary() == {}


def test_fidelity_sample_takes_the_first_batch_of_two_cut_to_the_maximum():
    # Prepare
    single = (torch.zeros(1, 3), torch.zeros(1))
    batch = (torch.arange(15.0).reshape(5, 3), torch.arange(5))
    # Execute
    z, y = fidelity_sample([single, batch], max_samples=4)
    # Assert
    assert torch.equal(z, batch[0][:4]) and torch.equal(y, batch[1][:4])
    assert fidelity_sample([single, batch], max_samples=0) is None
    assert fidelity_sample([single], max_samples=4) is None


def test_server_step_order_keeps_partition_order_or_shuffles_by_round():
    # Execute
    mixed = server_step_order(20, "mixed", seed=0, server_round=3)
    # Assert
    assert server_step_order(5, "partition", seed=0, server_round=3) == [0, 1, 2, 3, 4]
    assert sorted(mixed) == list(range(20)) and mixed != list(range(20))
    assert mixed == server_step_order(20, "mixed", seed=0, server_round=3)
    assert mixed != server_step_order(20, "mixed", seed=0, server_round=4)
    with pytest.raises(ValueError, match="server_order must be one of"):
        server_step_order(5, "random", seed=0, server_round=1)


def test_client_slots_follow_a_restored_client_to_its_new_node():
    # Prepare: two clients in a checkpoint, partition 1 with a changed buffer
    slots = ClientSlots(ClientStore(lambda partition_id: None))
    slots.add(7, 1).buffer_changed = True
    slots.add(9, 0)
    rows = slots.state_dict()
    restored = ClientSlots(slots.store)
    restored.load_state_dict(rows)
    # Execute
    claimed = restored.claim_restored(1, node_id=42)
    unknown = restored.claim_restored(5, node_id=43)
    # Assert
    assert rows == [[9, 0, True, False], [7, 1, True, True]]
    assert claimed and not unknown
    assert [node for node, _ in restored.by_partition()] == [9, 42]
    assert restored.find(1)[1].status(42).buffer_changed and not restored[42].restored
    with pytest.raises(KeyError):
        restored.find(5)
