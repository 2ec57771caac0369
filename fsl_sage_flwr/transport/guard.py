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
from dataclasses import asdict, dataclass
from typing import Any

import torch

from fsl_sage_flwr.transport.drop_reasons import IdentityClaimError
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
        Honest batches of a run stay close to it (on digits with the ``cnn``
        split, within 1.3 times), while a batch scaled ten times already moves
        the server model's BatchNorm statistics enough to cost most of its
        accuracy: see ``docs/privacy.md``.
    window : int
        Accepted batches the running scale is the median of.
    min_scale : float
        Floor of the running scale.
    """

    max_abs: float = 1e6
    factor: float = 5.0
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

    def state_dict(self) -> dict[str, Any]:
        """The scale's state as plain numbers, for a checkpoint.

        Returns
        -------
        dict[str, Any]
            ``"limits"``: the :class:`UploadLimits` fields by name; ``"recent"``:
            the accepted batches' largest ``|z|``, oldest first.
        """
        return {"limits": asdict(self.limits), "recent": list(self._recent)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, after checking all of it.

        The state must have been saved under the same limits: a scale computed
        over another window, or checked against another factor, is not the one
        this run would hold.

        Raises
        ------
        ValueError
            When keys or types are wrong, a value is negative or not finite,
            the limits differ from this scale's, or more values than the window
            holds are given. Nothing changes then.
        """
        _require_keys("ActivationScale", state, {"limits", "recent"})
        limits = state["limits"]
        _require_keys("ActivationScale limits", limits, set(asdict(self.limits)))
        if limits != asdict(self.limits):
            raise ValueError(
                f"ActivationScale state was saved with limits {limits}, this scale has {asdict(self.limits)}"
            )
        recent = state["recent"]
        if not isinstance(recent, list) or not all(_is_peak(value) for value in recent):
            raise ValueError("ActivationScale state 'recent' must be a list of finite numbers >= 0")
        if len(recent) > self.limits.window:
            raise ValueError(
                f"ActivationScale state holds {len(recent)} values, more than the window of {self.limits.window}"
            )
        self._recent = deque((float(value) for value in recent), maxlen=self.limits.window)


def _is_peak(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _require_keys(what: str, state: object, expected: set[str]) -> None:
    """Raise ValueError unless ``state`` is a dict with exactly the ``expected`` keys."""
    if not isinstance(state, dict):
        raise ValueError(f"{what} state must be a dict, got {type(state).__name__}")
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected, key=str)
        raise ValueError(f"{what} state has wrong keys: missing {missing}, unexpected {extra}")


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

    Identities restored by :meth:`load_state_dict` keep every bound, but their
    node ids are those of an earlier Flower run, and a new run (as a resumed
    one is) may draw new node ids. So, until the node of a restored identity is
    heard from again, a node id this registry does not know may take that
    partition over: it inherits the identity, and with it the number of samples
    first declared. Once registered, a restored node is bound as before.

    Parameters
    ----------
    max_partitions : int
        Partition ids must lie in ``[0, max_partitions)``.
    """

    def __init__(self, max_partitions: int) -> None:
        self.max_partitions = max_partitions
        self._nodes: dict[int, NodeIdentity] = {}
        self._owners: dict[int, int] = {}
        self._restored: set[int] = set()  # restored node ids not heard from since

    def get(self, node_id: int) -> NodeIdentity | None:
        """The identity ``node_id`` registered, if any."""
        return self._nodes.get(node_id)

    def check(self, node_id: int, partition_id: int, num_examples: int) -> None:
        """Raise MalformedReplyError unless the claim fits what is registered; change nothing.

        A partition id out of range, another node's, or not the node's own raises
        :class:`~fsl_sage_flwr.transport.drop_reasons.IdentityClaimError` (a setup fault).
        """
        if not 0 <= partition_id < self.max_partitions:
            raise IdentityClaimError(f"partition-id {partition_id} outside [0, {self.max_partitions})")
        known = self._nodes.get(node_id)
        owner = self._owners.get(partition_id)
        if owner is not None and owner != node_id:
            if known is not None or owner not in self._restored:
                raise IdentityClaimError(f"partition-id {partition_id} belongs to node {owner}")
            known = self._nodes[owner]  # a new node id taking over a restored identity
        if known is None:
            return
        if known.partition_id != partition_id:
            raise IdentityClaimError(f"partition-id {partition_id} differs from this node's {known.partition_id}")
        if num_examples > known.num_examples:
            raise MalformedReplyError(f"num-examples {num_examples} exceeds the {known.num_examples} first declared")

    def register(self, node_id: int, partition_id: int, num_examples: int) -> None:
        """Record a checked claim; a node's first identity stays, a restored one passes to a new node id."""
        if node_id in self._nodes:
            self._restored.discard(node_id)
            return
        owner = self._owners.get(partition_id)
        if owner in self._restored:
            self._restored.discard(owner)
            self._nodes[node_id] = self._nodes.pop(owner)
        else:
            self._nodes[node_id] = NodeIdentity(partition_id, num_examples)
        self._owners[partition_id] = node_id

    def snapshot(self) -> dict[int, NodeIdentity]:
        """Every registered node's identity (for comparisons)."""
        return dict(self._nodes)

    def state_dict(self) -> dict[str, Any]:
        """The registry as plain numbers, for a checkpoint.

        Returns
        -------
        dict[str, Any]
            ``"max_partitions"``, and ``"nodes"``: one ``[node_id, partition_id,
            num_examples]`` per node, in registration order (a partition's owner
            is the last node registered with it, as :meth:`register` made it).
        """
        nodes = [[node_id, i.partition_id, i.num_examples] for node_id, i in self._nodes.items()]
        return {"max_partitions": self.max_partitions, "nodes": nodes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned, after checking all of it.

        Every restored node counts as not heard from since (see the class).

        Raises
        ------
        ValueError
            When keys or types are wrong, ``max_partitions`` differs from this
            registry's, a partition id lies outside it, or a node id repeats.
            Nothing changes then.
        """
        _require_keys("IdentityRegistry", state, {"max_partitions", "nodes"})
        if state["max_partitions"] != self.max_partitions:
            raise ValueError(
                f"IdentityRegistry state was saved with max_partitions={state['max_partitions']!r}, "
                f"this registry has {self.max_partitions}"
            )
        nodes: dict[int, NodeIdentity] = {}
        for entry in _as_list("IdentityRegistry state 'nodes'", state["nodes"]):
            if not (isinstance(entry, (list, tuple)) and len(entry) == 3 and all(_is_count(v) for v in entry)):
                raise ValueError(f"IdentityRegistry node entry {entry!r} is not [node_id, partition_id, num_examples]")
            node_id, partition_id, num_examples = entry
            if partition_id >= self.max_partitions:
                raise ValueError(f"IdentityRegistry node {node_id}: partition-id {partition_id} out of range")
            if node_id in nodes:
                raise ValueError(f"IdentityRegistry state names node {node_id} twice")
            nodes[node_id] = NodeIdentity(partition_id, num_examples)
        self._nodes = nodes
        self._owners = {identity.partition_id: node_id for node_id, identity in nodes.items()}
        self._restored = set(nodes)


def _as_list(what: str, value: object) -> list:
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a list, got {type(value).__name__}")
    return value
