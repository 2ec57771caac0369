"""Flower's FedAvg with the split strategies' update bounds, and their record of dropped nodes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fsl_sage_flwr.strategies.guarded_fedavg import GuardedFedAvg
from fsl_sage_flwr.strategies.setup_drops import DropRecord
from fsl_sage_flwr.transport.drop_reasons import setup_kind
from fsl_sage_flwr.transport.log_text import client_text


class CheckedFedAvg(GuardedFedAvg):
    """Flower's FedAvg, unchanged in what it averages, which fails a run whose nodes are set up wrong.

    An error reply whose reason names a setup fault (see
    :func:`~fsl_sage_flwr.transport.drop_reasons.setup_kind`) fails the run in
    that round, and a node asked to train that never contributed fails it at
    the end, each named with its reason, unless ``allow_partial_federation``
    (see :class:`~fsl_sage_flwr.strategies.setup_drops.DropRecord`).

    Parameters
    ----------
    allow_partial_federation : bool
        Run on without nodes dropped for their setup, logging the summary.
    **kwargs
        As for :class:`~fsl_sage_flwr.strategies.guarded_fedavg.GuardedFedAvg` (update bounds,
        the average) and Flower's ``FedAvg``.
    """

    def __init__(self, *, allow_partial_federation: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.drops = DropRecord(allow_partial_federation)
        self._asked: set[int] = set()
        self._contributed: set[int] = set()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """As FedAvg; remember the nodes asked, to name those that never reply."""
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._asked = {msg.metadata.dst_node_id for msg in messages}
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record the round's error replies and missing nodes, fail on setup faults, then average as FedAvg.

        Raises
        ------
        SetupDropError
            When a node's error reply names a setup fault, unless ``allow_partial_federation``.
        """
        replies = list(replies)
        for msg in replies:
            node_id = msg.metadata.src_node_id
            if msg.has_error():
                reason = client_text(msg.error.reason, limit=400)
                self.drops.add(node_id, "", f"error reply: {reason}", setup_kind(reason))
            else:
                self._contributed.add(node_id)
        for node_id in sorted(self._asked - {msg.metadata.src_node_id for msg in replies}):
            self.drops.add(node_id, "", "no reply within the round timeout: node lost or slow", None)
        self._asked = set()
        self.drops.check_round(server_round)
        self.drops.start_round(server_round + 1)
        return super().aggregate_train(server_round, replies)

    def finish_run(self) -> None:
        """Log every dropped node with its reason; fail unless each contributed (or partial runs are allowed)."""
        self.drops.finish(lambda node_id: node_id in self._contributed)
