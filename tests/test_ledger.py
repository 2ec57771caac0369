"""Tests of the byte ledger."""

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fsl_sage_flwr.transport.ledger import ByteLedger, MeteredGrid, record_nbytes
from fsl_sage_flwr.transport.splitfed_step import smashed_arrays_record
from simulations.testing import ScriptedGrid, reply_from


def _content(n_samples: int) -> RecordDict:
    model = ArrayRecord([np.ones((3, 4), np.float32), np.zeros((5,), np.int64)])
    smashed = smashed_arrays_record(
        np.ones((n_samples, 16, 2, 2), np.float32),
        np.zeros((n_samples,), np.int64),
        np.asarray([n_samples], np.int64),
    )
    return RecordDict(
        {"arrays": model, "smashed": smashed, "config": ConfigRecord({"lr": 0.1}), "metrics": MetricRecord({"n": 3})}
    )


def test_record_nbytes_is_the_sum_of_array_nbytes():
    # Prepare
    content = _content(7)
    expected = sum(a.numpy().nbytes for r in content.array_records.values() for a in r.values())
    # Execute / Assert: labels and batch sizes count, scalars do not
    assert record_nbytes(content) == expected == 3 * 4 * 4 + 5 * 8 + 7 * 64 * 4 + 7 * 8 + 8


def test_ledger_totals_per_round_and_cumulative():
    # Prepare
    ledger = ByteLedger()
    # Execute: round 1 then round 2
    ledger.current_round = 1
    ledger.add_down(0, 10)
    ledger.add_up(0, 300)
    ledger.add_up(1, 20)
    ledger.current_round = 2
    ledger.add_down(1, 4000)
    # Assert
    assert ledger.round_totals(1) == (320, 10)
    assert ledger.cumulative_bytes(1) == 330
    assert ledger.cumulative_bytes() == 4330
    assert [(e.round, e.client, e.up, e.down) for e in ledger.entries()] == [
        (1, 0, 300, 10),
        (1, 1, 20, 0),
        (2, 1, 0, 4000),
    ]


def test_metered_grid_books_every_message_and_reply_by_node():
    # Prepare: a grid whose nodes echo a bigger reply
    def respond(msg):
        return reply_from(msg.metadata.dst_node_id, _content(5))

    grid = MeteredGrid(ScriptedGrid([7, 8], respond))
    messages = [Message(content=_content(1), dst_node_id=n, message_type="train") for n in (7, 8)]
    # Execute
    replies = grid.send_and_receive(messages)
    # Assert: the ledger equals the arrays' nbytes of what crossed
    sent = sum(record_nbytes(m.content) for m in messages)
    received = sum(record_nbytes(r.content) for r in replies)
    assert grid.ledger.round_totals(0) == (received, sent)
    assert {e.client for e in grid.ledger.entries()} == {7, 8}


def test_rebooked_resume_bytes_leave_the_round_totals_and_survive_a_checkpoint():
    # Prepare: node 7 gets 100 bytes and sends 40 in round 3, half of it a re-identification
    ledger = ByteLedger()
    ledger.current_round = 3
    ledger.add_down(7, 100)
    ledger.add_up(7, 40)
    # Execute
    ledger.rebook_as_resume(7, up=20, down=50)
    restored = ByteLedger()
    restored.load_state_dict(ledger.state_dict())
    # Assert
    assert restored.round_totals(3) == (20, 50)
    assert restored.resume_bytes(3) == 70
    assert restored.cumulative_bytes() == 70


def test_a_checkpoint_ledger_without_a_resume_account_still_loads():
    # Prepare
    state = {"current_round": 2, "up": [[1, 5, 10]], "down": [[1, 5, 30]]}
    ledger = ByteLedger()
    # Execute
    ledger.load_state_dict(state)
    # Assert
    assert ledger.round_totals(1) == (10, 30)
    assert ledger.resume_bytes(1) == 0
