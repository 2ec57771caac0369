"""Bounds on what the server trains on: activation magnitudes and node identities.

A reply can be finite and well-formed and still ruin the server: one activation
of 1e30 makes a BatchNorm running variance overflow, after which the server
model predicts one class for ever. The checks here run while a reply is parsed,
before anything changes; :func:`fsl_sage_flwr.core.estimation.server_step` guards the
optimizer step itself.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fsl_sage_flwr.transport.errors import MalformedReplyError


@dataclass(frozen=True)
class UploadLimits:
    """How large uploaded activations may be.

    A batch is refused when its largest ``|z|`` exceeds ``max_abs``, or, once
    one batch was accepted, ``factor`` times the running scale: the median of
    the largest ``|z|`` of the last ``window`` accepted batches, never taken
    below ``min_scale`` (so activations near zero do not shut every node out).

    Attributes
    ----------
    max_abs : float
        Absolute cap on any uploaded activation.
    factor : float
        How many times the running scale a batch's largest ``|z|`` may reach.
    window : int
        Accepted batches the running scale is the median of.
    min_scale : float
        Floor of the running scale.
    """

    max_abs: float = 1e6
    factor: float = 100.0
    window: int = 256
    min_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_abs", "factor", "min_scale"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and value > 0)
            ):
                raise ValueError(f"UploadLimits.{name} must be a finite number > 0, got {value!r}")
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ValueError(f"UploadLimits.window must be an int >= 1, got {self.window!r}")


class ActivationScale:
    """Running robust scale of accepted uploads, and the check against it.

    Parameters
    ----------
    limits : UploadLimits
        Cap, factor, window and floor.
    """

    def __init__(self, limits: UploadLimits) -> None:
        self.limits = limits
        self._recent: deque[float] = deque(maxlen=limits.window)

    @property
    def scale(self) -> float | None:
        """The median of the recent accepted batches' largest ``|z|``; None before the first."""
        return statistics.median(self._recent) if self._recent else None

    def bound(self) -> float:
        """The largest ``|z|`` a batch may hold now."""
        scale = self.scale
        if scale is None:
            return self.limits.max_abs
        return min(self.limits.max_abs, self.limits.factor * max(scale, self.limits.min_scale))

    def check(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Raise MalformedReplyError when any batch exceeds :meth:`bound`; change nothing."""
        bound = self.bound()
        for index, peak in enumerate(batch_peaks(batches)):
            if not peak <= bound:  # also catches NaN
                scale = self.scale
                relative = f"{self.limits.factor:g} x running scale {scale:.3g}" if scale is not None else "the cap"
                raise MalformedReplyError(
                    f"uploaded batch {index} reaches |z| = {peak:.3g}, above the bound {bound:.3g} ({relative})"
                )

    def accept(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Fold accepted batches into the running scale."""
        self._recent.extend(batch_peaks(batches))

    def snapshot(self) -> tuple[float, ...]:
        """The values the scale is computed from, oldest first (for comparisons)."""
        return tuple(self._recent)


def batch_peaks(batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[float]:
    """The largest ``|z|`` of each ``(z, y)`` batch (0 for an empty one)."""
    return [float(z.detach().abs().max()) if z.numel() else 0.0 for z, _ in batches]


@dataclass(frozen=True)
class NodeIdentity:
    """What a node first declared: its partition and its number of training samples."""

    partition_id: int
    num_examples: int


class IdentityRegistry:
    """Who holds which partition: a partition id belongs to the node that first took it.

    A node keeps the partition id of its first accepted reply, and may never
    claim more training samples than it first declared.

    Parameters
    ----------
    max_partitions : int
        Partition ids must lie in ``[0, max_partitions)``.
    """

    def __init__(self, max_partitions: int) -> None:
        self.max_partitions = max_partitions
        self._nodes: dict[int, NodeIdentity] = {}
        self._owners: dict[int, int] = {}

    def get(self, node_id: int) -> NodeIdentity | None:
        """The identity ``node_id`` registered, if any."""
        return self._nodes.get(node_id)

    def check(self, node_id: int, partition_id: int, num_examples: int) -> None:
        """Raise MalformedReplyError unless the claim fits what is registered; change nothing."""
        if not 0 <= partition_id < self.max_partitions:
            raise MalformedReplyError(f"partition-id {partition_id} outside [0, {self.max_partitions})")
        owner = self._owners.get(partition_id)
        if owner is not None and owner != node_id:
            raise MalformedReplyError(f"partition-id {partition_id} belongs to node {owner}")
        known = self._nodes.get(node_id)
        if known is None:
            return
        if known.partition_id != partition_id:
            raise MalformedReplyError(f"partition-id {partition_id} differs from this node's {known.partition_id}")
        if num_examples > known.num_examples:
            raise MalformedReplyError(f"num-examples {num_examples} exceeds the {known.num_examples} first declared")

    def register(self, node_id: int, partition_id: int, num_examples: int) -> None:
        """Record a checked claim; a node's first identity stays."""
        if node_id not in self._nodes:
            self._nodes[node_id] = NodeIdentity(partition_id, num_examples)
            self._owners[partition_id] = node_id

    def snapshot(self) -> dict[int, NodeIdentity]:
        """Every registered node's identity (for comparisons)."""
        return dict(self._nodes)
