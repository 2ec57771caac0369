"""Non-finite evaluation loss or weights: flagged in the results; the run fails unless the next round recovers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord

from fsl_sage_flwr.app.algorithms import ServerSetup
from fsl_sage_flwr.app.finite import NonFiniteError, NonFiniteWatch
from fsl_sage_flwr.app.results import ResultsWriter, RoundRecorder, read_results
from fsl_sage_flwr.transport.ledger import ByteLedger
from fsl_sage_flwr.transport.metrics import TrainMetricsTap

FINITE = ArrayRecord({"w": Array(np.ones(3, dtype=np.float32))})
NAN_WEIGHTS = ArrayRecord({"w": Array(np.array([1.0, np.nan, 2.0], dtype=np.float32))})


def _recorder(tmp_path, losses: dict[int, float], num_rounds: int) -> RoundRecorder:
    setup = ServerSetup(
        strategy=None,
        initial_arrays=ArrayRecord(),
        evaluate=lambda server_round, arrays: MetricRecord({"accuracy": 0.5, "loss": losses[server_round]}),
        server_memory_bytes=lambda: 0,
        final_models=lambda arrays: {},
        round_details=lambda: {},
    )
    return RoundRecorder(
        "fsl-sage",
        setup,
        ByteLedger(),
        ResultsWriter(tmp_path),
        TrainMetricsTap(),
        watch=NonFiniteWatch(num_rounds),
    )


def test_a_non_finite_round_followed_by_a_finite_one_is_flagged_and_recovered(tmp_path):
    # Prepare: round 1's loss is NaN, round 2's is finite again
    recorder = _recorder(tmp_path, {0: 2.0, 1: math.nan, 2: 1.0}, num_rounds=3)

    # Execute
    for server_round in range(3):
        recorder(server_round, FINITE)

    # Assert: the rows on disk say which round was not finite and which recovered
    rows = read_results(tmp_path / ResultsWriter.FILE_NAME)
    assert [row.get("non_finite", False) for row in rows] == [False, True, False]
    assert [row.get("recovered", False) for row in rows] == [False, False, True]


def test_two_non_finite_rounds_in_a_row_fail_the_run_naming_both(tmp_path):
    # Prepare: NaN weights in round 1, an infinite loss in round 2
    recorder = _recorder(tmp_path, {0: 2.0, 1: 1.0, 2: math.inf}, num_rounds=5)
    recorder(0, FINITE)
    recorder(1, NAN_WEIGHTS)

    # Execute / Assert
    with pytest.raises(NonFiniteError, match=r"round 2: evaluation loss not finite, as in round 1"):
        recorder(2, FINITE)
    rows = read_results(tmp_path / ResultsWriter.FILE_NAME)
    assert [row["round"] for row in rows] == [0, 1, 2]
    assert rows[-1]["non_finite"] is True


@pytest.mark.parametrize(("server_round", "which"), [(0, "the initial model"), (3, "the last round")])
def test_a_non_finite_initial_or_last_round_fails_at_once(tmp_path, server_round, which):
    # Prepare
    watch = NonFiniteWatch(num_rounds=3)

    # Execute
    flags = watch.flags(server_round, 1.0, NAN_WEIGHTS)

    # Assert
    assert flags == {"non_finite": True}
    with pytest.raises(NonFiniteError, match=rf"round {server_round} \({which}\): global weights \('w'\) not finite"):
        watch.raise_if_failed()


def test_a_resumed_run_after_a_non_finite_round_must_recover_in_its_first_round():
    # Prepare: the checkpoint's last row was not finite
    watch = NonFiniteWatch(num_rounds=10, rows=[{"round": 4, "non_finite": True}])

    # Execute
    watch.flags(5, math.nan, FINITE)

    # Assert
    with pytest.raises(NonFiniteError, match="as in round 4"):
        watch.raise_if_failed()


def test_finite_rounds_get_no_flags():
    # Prepare
    watch = NonFiniteWatch(num_rounds=2)

    # Execute
    flags = [watch.flags(r, 1.0, FINITE) for r in range(3)]

    # Assert
    assert flags == [{}, {}, {}]
    watch.raise_if_failed()
