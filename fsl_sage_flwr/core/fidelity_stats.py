"""Round summaries of the gradient fidelity the FSL-SAGE server measures on each upload."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fsl_sage_flwr.core.fidelity import Fidelity


def fidelity_sample(
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]], max_samples: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The ``(z, y)`` an upload's fidelity is measured on; ``None`` when it has none to measure.

    The first ``max_samples`` samples of the upload's first batch of at least
    two (BatchNorm in train mode needs two), as views, no copies; ``None`` when
    ``max_samples`` is 0 (measurement off) or below two, or no batch is large enough.
    """
    if max_samples == 0:
        return None
    batch = next(((z, y) for z, y in batches if z.shape[0] >= 2), None)
    if batch is None:
        return None
    count = min(max_samples, batch[0].shape[0])
    if count < 2:
        return None
    return batch[0][:count], batch[1][:count]


class FidelityLog:
    """The fidelity measurements since the last summary, each with its client's partition id.

    The server measures how well each client's auxiliary gradient matches its
    own (Nair et al., ICML 2025, Sec. 4; see
    :func:`~fsl_sage_flwr.core.fidelity.gradient_fidelity`) and reports the
    measurements once per round.
    """

    def __init__(self) -> None:
        self._measured: list[tuple[int, Fidelity]] = []

    def record(self, partition_id: int, fidelity: Fidelity) -> None:
        """Keep one measurement of the client of ``partition_id``."""
        self._measured.append((partition_id, fidelity))

    def pop_summary(self) -> dict[str, Any]:
        """Sum up the measurements since the last call and forget them.

        Returns
        -------
        dict
            Mean and minimum cosine, mean relative error, and per partition
            (keys are partition ids as strings) the mean cosine and relative
            error; empty when nothing was measured.
        """
        measured, self._measured = self._measured, []
        if not measured:
            return {}
        by_partition: dict[int, list[Fidelity]] = {}
        for partition_id, fidelity in measured:
            by_partition.setdefault(partition_id, []).append(fidelity)
        cosines = [f.cosine for _, f in measured]
        return {
            "fidelity_cosine_mean": sum(cosines) / len(cosines),
            "fidelity_cosine_min": min(cosines),
            "fidelity_relative_error_mean": sum(f.relative_error for _, f in measured) / len(measured),
            "fidelity_by_partition": {
                str(pid): {
                    "cosine": sum(f.cosine for f in items) / len(items),
                    "relative_error": sum(f.relative_error for f in items) / len(items),
                }
                for pid, items in sorted(by_partition.items())
            },
        }
