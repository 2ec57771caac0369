"""The client-model average a run chooses: weighted mean, coordinate-wise trimmed mean or median, or Krum."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean

from fsl_sage_flwr.strategies.averaging import restore_dtype, weighted_average
from fsl_sage_flwr.transport.arrays import ArraySpec, to_array

#: The averages the run-config key ``aggregation`` may name.
AGGREGATIONS = ("mean", "trimmed-mean", "median", "krum")

#: Share of the replies cut at each end of every coordinate by the trimmed mean.
TRIM_FRACTION = 0.2

#: How many hostile replies Krum is sized for (fewer when the round has too few replies).
KRUM_HOSTILE = 1


def aggregate(
    states: list[tuple[ArrayRecord, int]], spec: Mapping[str, ArraySpec], method: str = "mean"
) -> ArrayRecord:
    """Average ``(arrays, weight)`` pairs with ``method``; keep ``spec``'s dtypes.

    ``"mean"`` is :func:`~fsl_sage_flwr.strategies.averaging.weighted_average`,
    weighted by sample counts. ``"trimmed-mean"`` drops, per coordinate, the
    ``TRIM_FRACTION`` largest and smallest values and averages the rest;
    ``"median"`` takes the coordinate-wise median. Both ignore the weights: a
    node's sample count is its own claim, and a robust average should not let
    one claim outweigh the others. ``"krum"`` keeps the one reply closest to
    its nearest neighbours (Blanchard et al., NeurIPS 2017), sized for
    :data:`KRUM_HOSTILE` hostile replies.

    Raises
    ------
    ValueError
        When ``method`` is none of :data:`AGGREGATIONS`, or ``states`` is empty.
    """
    if method not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {', '.join(AGGREGATIONS)}, got {method!r}")
    if not states:
        raise ValueError("nothing to aggregate: no accepted replies")
    if method == "mean":
        return weighted_average(states, spec)
    if method == "krum":
        chosen = krum_index([{name: arrays[name].numpy() for name in spec} for arrays, _ in states])
        return ArrayRecord({name: to_array(states[chosen][0][name].numpy()) for name in spec})
    reduce = coordinate_median if method == "median" else coordinate_trimmed_mean
    return ArrayRecord(
        {
            name: to_array(restore_dtype(reduce([arrays[name].numpy() for arrays, _ in states]), entry.dtype))
            for name, entry in spec.items()
        }
    )


def coordinate_median(arrays: list[np.ndarray]) -> np.ndarray:
    """The coordinate-wise median of equally shaped arrays, computed in float64."""
    return np.median(np.stack([a.astype(np.float64) for a in arrays]), axis=0)


def coordinate_trimmed_mean(arrays: list[np.ndarray], cut_fraction: float = TRIM_FRACTION) -> np.ndarray:
    """The coordinate-wise mean after cutting ``cut_fraction`` of the values at each end, in float64."""
    return np.asarray(trim_mean(np.stack([a.astype(np.float64) for a in arrays]), cut_fraction))


def krum_index(replies: list[dict[str, np.ndarray]], hostile: int = KRUM_HOSTILE) -> int:
    """The index of the reply Krum selects: the smallest sum of squared distances to its closest others.

    Each reply is scored against its ``n - f - 2`` nearest others, where ``f``
    is ``hostile`` lowered until ``n > 2f + 2`` holds (at least one neighbour).
    Only floating-point arrays count, in float64; ties go to the earlier reply.
    """
    flat = [
        np.concatenate(
            [np.ravel(v).astype(np.float64) for v in arrays.values() if v.dtype.kind == "f"] or [np.zeros(0)]
        )
        for arrays in replies
    ]
    count = len(flat)
    if count <= 2:
        return 0
    assumed = max(0, min(hostile, (count - 3) // 2))
    neighbours = max(1, count - assumed - 2)
    with np.errstate(over="ignore", invalid="ignore"):
        distances = np.array([[float(np.sum((a - b) ** 2)) for b in flat] for a in flat])
    distances = np.nan_to_num(distances, nan=np.inf)
    scores = [float(np.sum(np.sort(np.delete(row, i))[:neighbours])) for i, row in enumerate(distances)]
    return int(np.argmin(scores))
