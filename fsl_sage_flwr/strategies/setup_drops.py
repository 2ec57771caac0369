"""The record of dropped nodes, and the rule that fails a run whose nodes are set up wrong."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from logging import WARNING

from flwr.common.logger import log

from fsl_sage_flwr.transport.drop_reasons import setup_detail

#: The run-config switch that lets a run go on without the nodes dropped for their setup.
ALLOW_PARTIAL_KEY = "allow-partial-federation"


class SetupDropError(RuntimeError):
    """The run stops: nodes were dropped for their setup, or never contributed."""


@dataclass
class NodeDrops:
    """What one node's dropped replies had in common: how many, when, and the latest reason."""

    node_id: int
    drops: int
    first_round: int
    last_round: int
    reason: str
    setup_kind: str | None = None
    """The kind of the latest setup drop (``shapes``, ``labels``, ``identity``), if any."""
    partition: str = ""
    """The node's registered partition as log lines name it (`` (partition 2)``), if any."""

    def label(self) -> str:
        """The node, its partition and its kind of fault: ``node 7 (partition 2) [labels]``."""
        kind = f" [{self.setup_kind}]" if self.setup_kind else ""
        return f"node {self.node_id}{self.partition}{kind}"

    def line(self) -> str:
        """One line naming the node, its kind of fault, its latest reason and when it was dropped."""
        if self.first_round == self.last_round:
            rounds = f"round {self.first_round}"
        else:
            rounds = f"rounds {self.first_round}-{self.last_round}"
        return f"{self.label()}: {self.reason} ({self.drops} drop(s), {rounds})"


class DropRecord:
    """Every dropped node with its latest reason; fails the run on setup faults unless told otherwise.

    A drop is a setup fault when its reason names one (see
    :func:`~fsl_sage_flwr.transport.drop_reasons.setup_kind`): inputs or
    activations of the wrong shape, labels outside the classes, a missing
    partition id or one claimed by another node. Such a fault repeats every
    round, so by default the round in which it shows (the first one the node
    takes part in) fails the run, naming each node and its reason. With
    ``allow_partial`` the run goes on without those nodes and says so every round.

    Parameters
    ----------
    allow_partial : bool
        Continue without nodes dropped for their setup (and without nodes that
        never contributed), logging a summary instead of failing.
    max_nodes : int
        Most nodes recorded; a flood of node ids cannot grow the record without bound.
    """

    def __init__(self, allow_partial: bool = False, max_nodes: int = 1000) -> None:
        if not isinstance(allow_partial, bool):
            raise TypeError(f"'allow_partial_federation' must be a bool, got {type(allow_partial).__name__}")
        self.allow_partial = allow_partial
        self.max_nodes = max_nodes
        self.nodes: dict[int, NodeDrops] = {}
        self._pending: dict[int, NodeDrops] = {}  # setup drops since the last check
        self._round = 0

    def add(self, node_id: int, partition: str, reason: str, kind: str | None) -> None:
        """Record one dropped reply of ``node_id``.

        Parameters
        ----------
        node_id : int
            The sender.
        partition : str
            Its registered partition as log lines name it (`` (partition 2)``), or ``""``.
        reason : str
            Why the reply was dropped (already made safe to log).
        kind : str, optional
            The setup kind the reason names; ``None`` for a transient drop.
        """
        if node_id not in self.nodes and len(self.nodes) >= self.max_nodes:
            return
        text = setup_detail(reason) if kind else reason
        server_round = self.current_round
        entry = self.nodes.setdefault(node_id, NodeDrops(node_id, 0, server_round, server_round, text))
        entry.drops += 1
        entry.last_round, entry.reason, entry.partition = server_round, text, partition
        if kind:
            entry.setup_kind = kind
            self._pending[node_id] = NodeDrops(node_id, 1, server_round, server_round, text, kind, partition)

    @property
    def current_round(self) -> int:
        """The round the drops that follow belong to."""
        return max(self._round, 1)

    def start_round(self, server_round: int) -> None:
        """Stamp the drops that follow with ``server_round``."""
        self._round = server_round

    def check_round(self, server_round: int) -> None:
        """Fail the run on the setup drops since the last check, or log them when partial runs are allowed.

        Raises
        ------
        SetupDropError
            Naming every node dropped for its setup and the reason, unless ``allow_partial``.
        """
        faults, self._pending = list(self._pending.values()), {}
        if not faults:
            return
        lines = "; ".join(f"{f.label()}: {f.reason}" for f in sorted(faults, key=lambda f: f.node_id))
        if not self.allow_partial:
            raise SetupDropError(
                f"round {server_round}: {len(faults)} node(s) dropped for their setup, which repeats every "
                f"round: {lines}. Fix these nodes, or set {ALLOW_PARTIAL_KEY} = true to run without them"
            )
        log(WARNING, "round %d: running without %d node(s) set up wrong: %s", server_round, len(faults), lines)

    def finish(self, contributed: Callable[[int], bool]) -> None:
        """Log the summary of dropped nodes; fail unless every dropped node contributed at some point.

        Raises
        ------
        SetupDropError
            Naming the nodes that never contributed and their latest reasons, unless ``allow_partial``.
        """
        if not self.nodes:
            return
        log(WARNING, "dropped nodes over the run (%d):", len(self.nodes))
        for entry in sorted(self.nodes.values(), key=lambda e: e.node_id):
            log(WARNING, "\t%s%s", entry.line(), "" if contributed(entry.node_id) else " - never contributed")
        never = [e for e in self.nodes.values() if not contributed(e.node_id)]
        if never and not self.allow_partial:
            lines = "; ".join(e.line() for e in sorted(never, key=lambda e: e.node_id))
            raise SetupDropError(
                f"{len(never)} node(s) never contributed to the run: {lines}. "
                f"Fix these nodes, or set {ALLOW_PARTIAL_KEY} = true to accept a partial federation"
            )

    def summary(self) -> list[dict[str, object]]:
        """Every dropped node as a plain record: node id, drops, first and last round, setup kind, reason."""
        return [
            {
                "node_id": e.node_id,
                "drops": e.drops,
                "first_round": e.first_round,
                "last_round": e.last_round,
                "setup_kind": e.setup_kind or "",
                "reason": e.reason,
            }
            for e in sorted(self.nodes.values(), key=lambda e: e.node_id)
        ]
