"""Bytes on the wire, per round, for a user's own ServerApp: wrap its grid, read each round's totals."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp import Grid

from fsl_sage_flwr.transport.ledger import ByteLedger, MeteredGrid

#: What a strategy's ``start(evaluate_fn=...)`` takes.
EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


@dataclass(frozen=True)
class RoundBytes:
    """The array bytes of one round, all nodes together."""

    round: int
    up: int
    """Bytes the nodes sent."""
    down: int
    """Bytes sent to the nodes."""
    cumulative: int
    """Bytes both ways, this round and every earlier one."""


class ByteMeter:
    """Meter every message a ServerApp exchanges, as the package's own ServerApp does.

    Hand :attr:`grid` to the strategy instead of Flower's grid, and pass
    :meth:`evaluate_fn` as ``start(evaluate_fn=...)``: round ``r``'s evaluation
    closes its byte count, so every later byte counts to round ``r + 1``.
    Works with every strategy, Flower's own included: what is counted is what
    was sent (array bytes: models, activations, gradients, labels).

    Parameters
    ----------
    grid : Grid
        The grid Flower gave the ServerApp.

    Examples
    --------
    >>> meter = ByteMeter(grid)                                      # doctest: +SKIP
    >>> strategy.start(meter.grid, strategy.initial_arrays(), num_rounds=3,
    ...                evaluate_fn=meter.evaluate_fn(strategy.evaluate_global))  # doctest: +SKIP
    >>> meter.totals()[-1].cumulative                                # doctest: +SKIP
    """

    def __init__(self, grid: Grid) -> None:
        self.ledger = ByteLedger()
        self.grid = MeteredGrid(grid, self.ledger)
        self._last_round = -1

    def evaluate_fn(self, evaluate: EvaluateFn | None = None) -> EvaluateFn:
        """Wrap ``evaluate`` so that each round's bytes join its metrics and its count closes.

        The returned metrics add ``bytes-up``, ``bytes-down`` and ``cumulative-bytes``
        to ``evaluate``'s (or are only those, without ``evaluate``).
        """

        def evaluate_and_close(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            metrics = evaluate(server_round, arrays) if evaluate is not None else None
            figures = self.round_totals(server_round)
            self._last_round = server_round
            self.ledger.current_round = server_round + 1
            return MetricRecord(
                {
                    **dict(metrics or {}),
                    "bytes-up": figures.up,
                    "bytes-down": figures.down,
                    "cumulative-bytes": figures.cumulative,
                }
            )

        return evaluate_and_close

    def round_totals(self, server_round: int) -> RoundBytes:
        """The bytes of ``server_round`` (0: before the first round)."""
        up, down = self.ledger.round_totals(server_round)
        return RoundBytes(server_round, up, down, self.ledger.cumulative_bytes(server_round))

    def totals(self) -> list[RoundBytes]:
        """One :class:`RoundBytes` per round so far: every evaluated round and any with bytes booked."""
        last = max([self._last_round, *(entry.round for entry in self.ledger.entries())])
        return [self.round_totals(r) for r in range(last + 1)]
