"""Aggregation of the clients' training metrics, kept for the results file."""

from __future__ import annotations

from flwr.app import MetricRecord, RecordDict

from fsl_sage_flwr.transport.keys import PARTITION_ID_KEY, PEAK_MEMORY_KEY

_NOT_AVERAGED = {PARTITION_ID_KEY, PEAK_MEMORY_KEY}


class TrainMetricsTap:
    """Aggregate training metrics as Flower's FedAvg does, and remember the last round's.

    Sample-weighted means, except ``peak-memory-bytes`` (the maximum over clients:
    the client that needs most memory sets the requirement) and ``partition-id``
    (dropped). Pass it as ``train_metrics_aggr_fn`` to any FedAvg-based strategy.
    """

    def __init__(self) -> None:
        self.last: MetricRecord = MetricRecord()

    def __call__(self, records: list[RecordDict], weight_key: str) -> MetricRecord:
        """Return the aggregate of ``records`` weighted by ``weight_key``."""
        metrics = [next(iter(r.metric_records.values())) for r in records]
        total = float(sum(m[weight_key] for m in metrics)) or 1.0
        result = MetricRecord()
        for m in metrics:
            share = float(m[weight_key]) / total
            for key, value in m.items():
                if key in _NOT_AVERAGED or key == weight_key or isinstance(value, list):
                    continue
                result[key] = float(result.get(key, 0.0)) + float(value) * share
        peaks = [int(m[PEAK_MEMORY_KEY]) for m in metrics if PEAK_MEMORY_KEY in m]
        if peaks:
            result[PEAK_MEMORY_KEY] = max(peaks)
        result[weight_key] = int(total)
        self.last = result
        return result
