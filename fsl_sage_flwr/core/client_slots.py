"""What the FSL-SAGE server keeps for one client: flags in memory, aux copy and buffer in the store."""

from __future__ import annotations

from dataclasses import dataclass

from fsl_sage_flwr.core.checkpoint import ClientState, ClientStore


@dataclass(frozen=True)
class ClientStatus:
    """Where one client's auxiliary model stands on the server.

    Attributes
    ----------
    partition_id : int
        The client's partition, fixed for the run (and across a resume).
    node_id : int
        The node the client runs on now.
    aux_pending : bool
        Its aux was aligned since it was last delivered: it travels with the
        client's next train request (Nair et al., ICML 2025, Alg. 1).
    buffer_changed : bool
        Uploads entered its buffer since its aux was last aligned.
    """

    partition_id: int
    node_id: int
    aux_pending: bool
    buffer_changed: bool


@dataclass
class ClientSlot:
    """The server's record of one client: its flags, and its partition's entry in the store."""

    partition_id: int
    store: ClientStore
    aux_pending: bool = True  # aligned since it was last delivered
    buffer_changed: bool = False
    restored: bool = False  # from a checkpoint, and its node not heard from since

    @property
    def state(self) -> ClientState:
        """Aux model, aux optimizer and buffer (loaded from disk if not cached)."""
        return self.store.get(self.partition_id)

    def status(self, node_id: int) -> ClientStatus:
        """A snapshot of the flags, for the client now on ``node_id``."""
        return ClientStatus(self.partition_id, node_id, self.aux_pending, self.buffer_changed)


class ClientSlots:
    """The server's client records by node id; a client keeps its partition id when its node id changes.

    Parameters
    ----------
    store : ClientStore
        Where each client's aux model, aux optimizer and buffer live, by partition id.
    """

    def __init__(self, store: ClientStore) -> None:
        self.store = store
        self._by_node: dict[int, ClientSlot] = {}

    def __len__(self) -> int:
        return len(self._by_node)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._by_node

    def __getitem__(self, node_id: int) -> ClientSlot:
        return self._by_node[node_id]

    def get(self, node_id: int) -> ClientSlot | None:
        """The slot of ``node_id``, or ``None`` for a node that never warmed up."""
        return self._by_node.get(node_id)

    def add(self, node_id: int, partition_id: int) -> ClientSlot:
        """Record a new client; its state must already be in the store."""
        slot = ClientSlot(partition_id, self.store)
        self._by_node[node_id] = slot
        return slot

    def claim_restored(self, partition_id: int, node_id: int) -> bool:
        """Move the checkpoint's slot of ``partition_id`` to ``node_id``; False when there is none.

        A resumed run meets its clients under new node ids: each keeps its state.
        """
        for old_node_id, slot in self._by_node.items():
            if slot.restored and slot.partition_id == partition_id:
                del self._by_node[old_node_id]
                slot.restored = False
                self._by_node[node_id] = slot
                return True
        return False

    def by_partition(self) -> list[tuple[int, ClientSlot]]:
        """``(node id, slot)`` of every client, by partition id."""
        return sorted(self._by_node.items(), key=lambda item: item[1].partition_id)

    def find(self, partition_id: int) -> tuple[int, ClientSlot]:
        """``(node id, slot)`` of the client of ``partition_id``.

        Raises
        ------
        KeyError
            When no client of that partition is known.
        """
        for node_id, slot in self._by_node.items():
            if slot.partition_id == partition_id:
                return node_id, slot
        raise KeyError(f"no client of partition {partition_id}")

    def state_dict(self) -> list[list[int | bool]]:
        """``[node id, partition id, aux pending, buffer changed]`` of every client, for a checkpoint."""
        return [[node_id, s.partition_id, s.aux_pending, s.buffer_changed] for node_id, s in self.by_partition()]

    def load_state_dict(self, rows: list[list[int | bool]]) -> None:
        """Replace every slot with :meth:`state_dict`'s rows; each aux travels again, to a new Flower run."""
        self._by_node = {
            int(node_id): ClientSlot(
                int(partition_id), self.store, aux_pending=True, buffer_changed=bool(changed), restored=True
            )
            for node_id, partition_id, _, changed in rows
        }
