"""The one weighted average of client-side arrays every split strategy uses."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fsl_sage_flwr.transport.arrays import ArraySpec, to_array
from fsl_sage_flwr.transport.keys import ARRAYS_KEY, METRICS_KEY, NUM_EXAMPLES_KEY

#: The metric a reply's arrays are weighted by: its sample count.
WEIGHT_KEY = NUM_EXAMPLES_KEY


def weighted_average(states: list[tuple[ArrayRecord, int]], spec: Mapping[str, ArraySpec]) -> ArrayRecord:
    """Average ``(arrays, weight)`` pairs by weight, as Flower's FedAvg does; keep ``spec``'s dtypes.

    Every split strategy averages through this one function: client models,
    client and auxiliary models, SplitFed-MS's server-side copies. The sum runs
    in the arrays' own precision, in the order given; integer arrays (BatchNorm
    counters) are rounded back to integers, not truncated.
    """
    records = [
        RecordDict({ARRAYS_KEY: arrays, METRICS_KEY: MetricRecord({WEIGHT_KEY: weight})}) for arrays, weight in states
    ]
    averaged = aggregate_arrayrecords(records, WEIGHT_KEY)
    return ArrayRecord(
        {name: to_array(restore_dtype(averaged[name].numpy(), entry.dtype)) for name, entry in spec.items()}
    )


def restore_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """Cast an average back to ``dtype``; integer arrays are rounded, not truncated."""
    # Averaging turns integer counters into floats; round them back.
    if np.dtype(dtype).kind in "iu":
        values = np.rint(values)
    return values.astype(dtype)
