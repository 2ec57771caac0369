"""Tests of the round recorder: one results row and one log line per evaluated round."""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, MetricRecord

from fsl_sage_flwr.app.algorithms import ServerSetup
from fsl_sage_flwr.app.results import ResultsWriter, RoundRecorder, format_duration, read_results
from fsl_sage_flwr.transport.ledger import ByteLedger
from fsl_sage_flwr.transport.metrics import PEAK_MEMORY_KEY, TrainMetricsTap


def _setup(accuracies: dict[int, float]) -> ServerSetup:
    return ServerSetup(
        strategy=None,
        initial_arrays=ArrayRecord(),
        evaluate=lambda server_round, arrays: MetricRecord({"accuracy": accuracies[server_round], "loss": 1.0}),
        server_memory_bytes=lambda: 4096,
        final_models=lambda arrays: {},
        round_details=lambda: {"alignments": 2},
    )


def test_each_round_gets_its_own_bytes_time_and_row(tmp_path, caplog):
    # Prepare: a clock that reads 10, 12, 17; 100 bytes before round 0's evaluation
    ledger = ByteLedger()
    tap = TrainMetricsTap()
    tap.last = MetricRecord({PEAK_MEMORY_KEY: 777})
    times = iter([10.0, 12.0, 17.0])
    recorder = RoundRecorder(
        "fsl-sage", _setup({0: 0.1, 1: 0.6}), ledger, ResultsWriter(tmp_path), tap, clock=lambda: next(times)
    )
    ledger.add_down(1, 100)
    # Execute: evaluate round 0, then 30 bytes up and 50 down in round 1
    with caplog.at_level(logging.INFO, logger="flwr"):
        recorder(0, ArrayRecord())
        ledger.add_up(1, 30)
        ledger.add_down(1, 50)
        metrics = recorder(1, ArrayRecord())
    # Assert: bytes after round 0's evaluation are round 1's; rows on disk as kept
    first, second = recorder.rows
    assert metrics["accuracy"] == 0.6
    assert ledger.current_round == 2
    assert (first["bytes_up"], first["bytes_down"], first["cumulative_bytes"]) == (0, 100, 100)
    assert (second["bytes_up"], second["bytes_down"], second["cumulative_bytes"]) == (30, 50, 180)
    assert (first["round_seconds"], second["round_seconds"]) == (2.0, 5.0)
    assert first["client_peak_memory_bytes"] == 0 and second["client_peak_memory_bytes"] == 777
    assert second["server_memory_bytes"] == 4096 and second["alignments"] == 2
    assert read_results(tmp_path / ResultsWriter.FILE_NAME) == recorder.rows
    logged = [r.getMessage() for r in caplog.records if "test accuracy" in r.getMessage()]
    assert logged == [
        "round 0: test accuracy 0.1000, loss 1.0000, 0.00 MiB sent so far",
        "round 1: test accuracy 0.6000, loss 1.0000, 0.00 MiB sent so far",
    ]


def test_a_resumed_run_keeps_the_checkpoint_rows(tmp_path):
    # Prepare: the checkpoint's round 0
    earlier = [{"round": 0, "accuracy": 0.1}]
    ledger = ByteLedger()
    ledger.current_round = 1
    writer = ResultsWriter(tmp_path, resume_rows=earlier)
    recorder = RoundRecorder("cse-fsl", _setup({1: 0.5}), ledger, writer, TrainMetricsTap(), earlier)
    # Execute
    recorder(1, ArrayRecord())
    # Assert
    assert [r["round"] for r in recorder.rows] == [0, 1]
    assert [r["round"] for r in read_results(tmp_path / ResultsWriter.FILE_NAME)] == [0, 1]


def test_each_log_line_says_how_long_the_run_has_left_from_the_mean_round(tmp_path, caplog):
    # Prepare: a 10-round run whose rounds 1 and 2 take 30 s and 90 s
    times = iter([0.0, 5.0, 35.0, 125.0])
    recorder = RoundRecorder(
        "fsl-sage",
        _setup({0: 0.1, 1: 0.2, 2: 0.3}),
        ByteLedger(),
        ResultsWriter(tmp_path),
        TrainMetricsTap(),
        clock=lambda: next(times),
        num_rounds=10,
    )
    # Execute
    with caplog.at_level(logging.INFO, logger="flwr"):
        for server_round in range(3):
            recorder(server_round, ArrayRecord())
    # Assert: none after round 0 (no timed round yet); 8 rounds of 60 s left after round 2
    logged = [r.getMessage() for r in caplog.records if "test accuracy" in r.getMessage()]
    assert not logged[0].endswith("left")
    assert logged[1].endswith(", about 4 min 30 s left")
    assert logged[2].endswith(", about 8 min 0 s left")


def test_durations_read_as_a_person_says_them():
    assert [format_duration(s) for s in (0.4, 45, 725, 12_000)] == ["0 s", "45 s", "12 min 5 s", "3 h 20 min"]
