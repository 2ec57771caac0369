"""Tests of the training-metrics aggregation."""

from flwr.app import MetricRecord, RecordDict

from fsl_sage_flwr.transport.metrics import TrainMetricsTap


def _reply(n: int, loss: float, peak: int, partition: int) -> RecordDict:
    return RecordDict(
        {
            "metrics": MetricRecord(
                {"num-examples": n, "train-loss": loss, "peak-memory-bytes": peak, "partition-id": partition}
            )
        }
    )


def test_weighted_means_except_peak_memory_which_is_the_maximum():
    # Prepare
    tap = TrainMetricsTap()
    # Execute
    result = tap([_reply(10, 1.0, 500, 0), _reply(30, 3.0, 200, 1)], "num-examples")
    # Assert
    assert result["train-loss"] == 2.5
    assert result["peak-memory-bytes"] == 500
    assert result["num-examples"] == 40
    assert "partition-id" not in result
    assert tap.last is result
