"""Keep the bytes a resumed run spends re-identifying its nodes out of the algorithm's byte counts."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fsl_sage_flwr.transport.grid_wrapper import GridWrapper
from fsl_sage_flwr.transport.keys import PARTITION_ID_KEY, WARMUP_KEY
from fsl_sage_flwr.transport.ledger import ByteLedger, record_nbytes


class ResumeAccountingGrid(GridWrapper):
    """Book a resumed run's re-identification warm-ups on the ledger's resume account.

    Flower gives nodes new ids when a federation restarts, so a resumed run asks
    each unknown node, with a warm-up, which partition it holds. For a node that
    turns out to hold a partition of the checkpoint, that exchange is due to the
    interruption, not to the algorithm: its bytes move to
    :meth:`~fsl_sage_flwr.transport.ledger.ByteLedger.rebook_as_resume`, so the
    results' byte counters equal those of an uninterrupted run. A node holding a
    partition the checkpoint does not know is a new client, counted as usual.

    Parameters
    ----------
    grid : Grid
        The metering grid the messages go through (it books them first).
    ledger : ByteLedger
        That grid's ledger.
    server_state : Mapping[str, Any]
        The checkpoint's server state; its ``"identities"`` name the known nodes
        and partitions. Without them nothing is rebooked.
    """

    def __init__(self, grid: Grid, ledger: ByteLedger, server_state: Mapping[str, Any]) -> None:
        super().__init__(grid)
        self.ledger = ledger
        nodes = server_state.get("identities", {}).get("nodes", [])
        self._known_nodes = {int(row[0]) for row in nodes}
        self._pending_partitions = {int(row[1]) for row in nodes}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Send ``messages``; rebook the warm-ups that re-identify checkpointed partitions."""
        messages = list(messages)
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        if self._pending_partitions:
            self._rebook(messages, replies)
        return replies

    def _rebook(self, messages: list[Message], replies: list[Message]) -> None:
        requests = {m.metadata.dst_node_id: m for m in messages if _flag(m.content, WARMUP_KEY)}
        for reply in replies:
            node_id = reply.metadata.src_node_id
            if node_id not in requests or node_id in self._known_nodes or not reply.has_content():
                continue
            partition = _flag(reply.content, PARTITION_ID_KEY)
            if isinstance(partition, bool) or not isinstance(partition, int):
                continue
            if partition in self._pending_partitions:
                self._pending_partitions.discard(partition)
                self.ledger.rebook_as_resume(
                    node_id, up=record_nbytes(reply.content), down=record_nbytes(requests[node_id].content)
                )


def _flag(content: RecordDict, key: str) -> Any:
    """Return ``key``'s value from the config or metric records of ``content``; None when absent."""
    for record in (*content.config_records.values(), *content.metric_records.values()):
        if key in record:
            return record[key]
    return None
