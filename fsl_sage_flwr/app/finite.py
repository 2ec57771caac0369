"""The rule for non-finite evaluations: a round may recover in the next, a second in a row fails the run."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord
from flwr.common.logger import log

#: results-row field of a round whose evaluation loss or global weights were not finite
NON_FINITE = "non_finite"
#: results-row field of a round that followed a non-finite one and was finite again
RECOVERED = "recovered"


class NonFiniteError(RuntimeError):
    """The global model or its evaluation loss stayed non-finite; the run ends failed."""


class NonFiniteWatch:
    """Flag rounds whose evaluation loss or global arrays are NaN or infinite, and fail the run when needed.

    A non-finite round is written to the results with ``"non_finite": true``;
    the run goes on only if the next round may still recover. It fails, naming
    the round, when the initial model (round 0) or the last round is non-finite,
    or when two rounds in a row are. The round after a non-finite one that is
    finite again gets ``"recovered": true``.

    Parameters
    ----------
    num_rounds : int
        The run's last round.
    rows : Sequence[Mapping[str, Any]]
        Rows already recorded (a resumed run's), whose last one may be non-finite.
    """

    def __init__(self, num_rounds: int, rows: Sequence[Mapping[str, Any]] = ()) -> None:
        if num_rounds < 1:
            raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
        self.num_rounds = num_rounds
        self._pending: int | None = int(rows[-1]["round"]) if rows and rows[-1].get(NON_FINITE) else None
        self._failure = ""

    def flags(self, server_round: int, loss: float, arrays: ArrayRecord) -> dict[str, bool]:
        """Return the row fields of ``server_round`` and remember whether the run must fail.

        Call :meth:`raise_if_failed` once the row is written.
        """
        what = _non_finite_parts(loss, arrays)
        if not what:
            recovered, self._pending = self._pending is not None, None
            return {RECOVERED: True} if recovered else {}
        log(WARNING, "round %d: %s not finite", server_round, " and ".join(what))
        if self._pending is not None:
            self._failure = (
                f"round {server_round}: {' and '.join(what)} not finite, as in round {self._pending}; "
                "the model did not recover (lower lr, or check the data)"
            )
        elif server_round == 0 or server_round >= self.num_rounds:
            which = "the initial model" if server_round == 0 else "the last round"
            self._failure = f"round {server_round} ({which}): {' and '.join(what)} not finite"
        self._pending = server_round
        return {NON_FINITE: True}

    def raise_if_failed(self) -> None:
        """Raise :class:`NonFiniteError` when the last flagged round ended the run."""
        if self._failure:
            raise NonFiniteError(self._failure)


def _non_finite_parts(loss: float, arrays: ArrayRecord) -> list[str]:
    """Name what is not finite: the evaluation loss, the global weights, both or neither."""
    parts = []
    if not math.isfinite(float(loss)):
        parts.append("evaluation loss")
    for name, array in arrays.items():
        values = array.numpy()
        if np.issubdtype(values.dtype, np.floating) and not np.isfinite(values).all():
            parts.append(f"global weights ('{name}')")
            break
    return parts
