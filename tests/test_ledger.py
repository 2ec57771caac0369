"""Tests of the byte ledger."""

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fsl_sage_flwr.ledger import ByteLedger, record_nbytes
from fsl_sage_flwr.wire import smashed_arrays_record


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
    small, large = _content(1), _content(10)
    # Execute
    ledger.add_down(1, 0, small)
    ledger.add_up(1, 0, large)
    ledger.add_up(1, 1, small)
    ledger.add_down(2, 1, large)
    # Assert
    assert ledger.round_totals(1) == (record_nbytes(large) + record_nbytes(small), record_nbytes(small))
    assert ledger.cumulative_bytes(1) == record_nbytes(large) + 2 * record_nbytes(small)
    assert ledger.cumulative_bytes() == 2 * record_nbytes(large) + 2 * record_nbytes(small)
    assert [(e.round, e.client) for e in ledger.entries()] == [(1, 0), (1, 1), (2, 1)]
