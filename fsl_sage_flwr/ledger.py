"""Byte ledger: the bytes each client sends and receives, round by round."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from flwr.app import RecordDict


def record_nbytes(content: RecordDict) -> int:
    """Return the summed ``nbytes`` of every array in a message's records.

    Sizes come from each array's shape and dtype, so nothing is deserialised.
    Scalars in config and metric records are not counted: only arrays are.
    """
    total = 0
    for array_record in content.array_records.values():
        for array in array_record.values():
            total += math.prod(array.shape) * np.dtype(array.dtype).itemsize
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

    Counts the client model, the auxiliary model, activations and labels alike,
    which the reference implementation does not (it leaves labels out).
    """

    def __init__(self) -> None:
        self._up: dict[tuple[int, int], int] = defaultdict(int)
        self._down: dict[tuple[int, int], int] = defaultdict(int)

    def add_down(self, server_round: int, client: int, content: RecordDict) -> int:
        """Count a message sent to ``client``; return its bytes."""
        nbytes = record_nbytes(content)
        self._down[(server_round, client)] += nbytes
        return nbytes

    def add_up(self, server_round: int, client: int, content: RecordDict) -> int:
        """Count a reply received from ``client``; return its bytes."""
        nbytes = record_nbytes(content)
        self._up[(server_round, client)] += nbytes
        return nbytes

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
        def counted(r: int) -> bool:
            return through_round is None or r <= through_round

        return sum(v for (r, _), v in self._up.items() if counted(r)) + sum(
            v for (r, _), v in self._down.items() if counted(r)
        )
