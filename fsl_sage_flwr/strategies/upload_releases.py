"""The server's count of each partition's private uploads, and the epsilon they have cost."""

from __future__ import annotations

from typing import Any

from fsl_sage_flwr.transport.local_training import LocalTraining
from fsl_sage_flwr.transport.upload_privacy import UploadPrivacy


class UploadReleases:
    """Uploaded batches per partition, each one release of B of the node's n samples.

    The server trains only on uploads its clients noised (``UploadPrivacy``);
    this record turns the count it received into each partition's epsilon with
    the accountant of :mod:`fsl_sage_flwr.core.dp_accounting`, for the results rows.
    """

    def __init__(self) -> None:
        self._releases: dict[int, int] = {}
        self._num_examples: dict[int, int] = {}

    def record(self, partition_id: int, num_examples: int, releases: int) -> None:
        """Count ``releases`` uploads of the partition of ``num_examples`` samples."""
        self._releases[partition_id] = self._releases.get(partition_id, 0) + releases
        self._num_examples[partition_id] = num_examples

    def summary(self, privacy: UploadPrivacy, training: LocalTraining) -> dict[str, Any]:
        """``dp_epsilon_max``, ``dp_epsilon_mean`` and ``dp_epsilon_by_partition`` (partition ids as strings)."""
        if not privacy.dp_on:
            return {}
        by_partition = {
            str(pid): privacy.epsilon(self._num_examples[pid], training, releases)
            for pid, releases in sorted(self._releases.items())
        }
        values = list(by_partition.values())
        return {
            "dp_epsilon_max": max(values, default=0.0),
            "dp_epsilon_mean": sum(values) / len(values) if values else 0.0,
            "dp_epsilon_by_partition": by_partition,
            "dp_delta": privacy.dp_delta,
        }

    def state_dict(self) -> dict[str, dict[int, int]]:
        """The counts, for a checkpoint."""
        return {"releases": dict(self._releases), "num_examples": dict(self._num_examples)}

    def load_state_dict(self, state: dict[str, dict[int, int]]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self._releases = {int(k): int(v) for k, v in state["releases"].items()}
        self._num_examples = {int(k): int(v) for k, v in state["num_examples"].items()}
