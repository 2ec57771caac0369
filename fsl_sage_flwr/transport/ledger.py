"""Byte ledger: the bytes each client sends and receives, round by round."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

from fsl_sage_flwr.transport.grid_wrapper import GridWrapper


def record_nbytes(content: RecordDict) -> int:
    """Return the summed ``nbytes`` of every array in a message's records.

    Sizes come from each array's shape and dtype, so nothing is deserialised.
    Scalars in config and metric records are not counted: only arrays are.
    """
    total = 0
    for array_record in content.array_records.values():
        for array in array_record.values():
            try:
                total += math.prod(array.shape) * np.dtype(array.dtype).itemsize
            except TypeError:  # a foreign dtype: count the bytes that came
                total += len(array.data)
    return total


@dataclass(frozen=True)
class LedgerEntry:
    """Bytes one client sent up and received down in one round."""

    round: int
    client: int
    up: int
    down: int


class ByteLedger:
    """Record every client's communication, per round, as array bytes.

    Counts client models, auxiliary models, activations, gradients and labels
    alike (the reference implementation leaves labels out). Bytes are booked to
    ``current_round``, which the run advances after each round's evaluation.
    """

    def __init__(self) -> None:
        self.current_round = 0
        self._up: dict[tuple[int, int], int] = defaultdict(int)
        self._down: dict[tuple[int, int], int] = defaultdict(int)
        # Bytes a resumed run spent finding which new node holds which checkpointed client.
        self._resume: dict[int, int] = defaultdict(int)

    def add_down(self, client: int, nbytes: int) -> None:
        """Book ``nbytes`` sent to ``client`` in the current round."""
        self._down[(self.current_round, client)] += nbytes

    def add_up(self, client: int, nbytes: int) -> None:
        """Book ``nbytes`` received from ``client`` in the current round."""
        self._up[(self.current_round, client)] += nbytes

    def rebook_as_resume(self, client: int, up: int, down: int) -> None:
        """Move bytes of ``client`` in the current round to the resume account.

        A resumed run whose nodes came back with new ids asks them who they are;
        that exchange would not have happened without the interruption, so it is
        kept out of the algorithm's counts and reported apart (:meth:`resume_bytes`).
        """
        key = (self.current_round, client)
        up, down = min(up, self._up.get(key, 0)), min(down, self._down.get(key, 0))
        self._up[key] -= up
        self._down[key] -= down
        self._resume[self.current_round] += up + down

    def resume_bytes(self, server_round: int) -> int:
        """Return the bytes of ``server_round`` moved by :meth:`rebook_as_resume`."""
        return self._resume.get(server_round, 0)

    def state_dict(self) -> dict[str, object]:
        """The ledger as plain lists, for a checkpoint."""
        return {
            "current_round": self.current_round,
            "up": [[r, c, v] for (r, c), v in self._up.items()],
            "down": [[r, c, v] for (r, c), v in self._down.items()],
            "resume": [[r, v] for r, v in self._resume.items()],
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Replace the ledger's contents with :meth:`state_dict`'s."""
        self.current_round = int(state["current_round"])
        self._up = defaultdict(int, {(int(r), int(c)): int(v) for r, c, v in state["up"]})
        self._down = defaultdict(int, {(int(r), int(c)): int(v) for r, c, v in state["down"]})
        self._resume = defaultdict(int, {int(r): int(v) for r, v in state.get("resume", [])})

    def entries(self) -> list[LedgerEntry]:
        """Return one entry per (round, client), sorted."""
        keys = sorted(set(self._up) | set(self._down))
        return [LedgerEntry(r, c, self._up.get((r, c), 0), self._down.get((r, c), 0)) for r, c in keys]

    def round_totals(self, server_round: int) -> tuple[int, int]:
        """Return ``(up, down)`` bytes of all clients in ``server_round``."""
        up = sum(v for (r, _), v in self._up.items() if r == server_round)
        down = sum(v for (r, _), v in self._down.items() if r == server_round)
        return up, down

    def cumulative_bytes(self, through_round: int | None = None) -> int:
        """Return all bytes up and down, up to and including ``through_round``."""
        last = math.inf if through_round is None else through_round
        return sum(v for (r, _), v in (*self._up.items(), *self._down.items()) if r <= last)


class MeteredGrid(GridWrapper):
    """A Grid that books the array bytes of every message it carries.

    Wrapping the transport, rather than each strategy, meters every algorithm
    the same way, Flower's own FedAvg included: what is counted is what was
    sent. A message is booked to its destination node, a reply to its source.
    """

    def __init__(self, grid: Grid, ledger: ByteLedger | None = None) -> None:
        super().__init__(grid)
        self.ledger = ledger if ledger is not None else ByteLedger()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Book and push messages."""
        messages = list(messages)
        self._book_sent(messages)
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull replies and book them."""
        replies = list(self.inner.pull_messages(message_ids))
        self._book_received(replies)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Book messages, send them, book and return the replies."""
        messages = list(messages)
        self._book_sent(messages)
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        self._book_received(replies)
        return replies

    def _book_sent(self, messages: list[Message]) -> None:
        for message in messages:
            self.ledger.add_down(message.metadata.dst_node_id, record_nbytes(message.content))

    def _book_received(self, replies: list[Message]) -> None:
        for reply in replies:
            if reply.has_content():
                self.ledger.add_up(reply.metadata.src_node_id, record_nbytes(reply.content))
