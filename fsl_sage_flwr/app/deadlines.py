"""Deadlines of a run and of each exchange with its nodes, and the rule that a stalled run fails."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from flwr.app import Message
from flwr.serverapp import Grid

from fsl_sage_flwr.transport.grid_wrapper import GridWrapper


class RunDeadlineExceeded(RuntimeError):
    """The run took longer than ``run-timeout``; it ends failed."""


class NoProgressError(RuntimeError):
    """Too many rounds in a row in which no node finished its round; the run ends failed."""


class DeadlineGrid(GridWrapper):
    """A Grid that bounds every exchange with the nodes by ``round-timeout`` and by the run's time left.

    Each ``send_and_receive`` waits at most ``round_timeout`` seconds, and no
    longer than the time left until the run's deadline (``run_timeout`` seconds
    after construction, when the run starts waiting for nodes). Replies missing
    then are simply absent, which the strategies count as lost nodes. Once the
    run's deadline has passed, the next exchange or node query raises
    :class:`RunDeadlineExceeded`, so the run ends failed, naming the cause.

    The bound is per exchange, not per round: a round of several exchanges (a
    warm-up, then training) would otherwise lose every later exchange to one
    node that hangs in the first.

    Parameters
    ----------
    grid : Grid
        The grid that carries the messages.
    round_timeout : float
        Seconds each exchange waits for its replies.
    run_timeout : float
        Seconds the whole run may take; 0 means no limit.
    max_rounds_without_progress : int
        Rounds in a row without new global arrays after which :meth:`record_progress` fails the run.
    clock : Callable[[], float]
        Seconds of a monotonic clock.
    """

    def __init__(
        self,
        grid: Grid,
        round_timeout: float,
        run_timeout: float = 0.0,
        *,
        max_rounds_without_progress: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(round_timeout) and round_timeout > 0):
            raise ValueError(f"round_timeout must be a positive number of seconds, got {round_timeout}")
        if not (math.isfinite(run_timeout) and run_timeout >= 0):
            raise ValueError(f"run_timeout must be >= 0 seconds (0 = no limit), got {run_timeout}")
        if max_rounds_without_progress < 1:
            raise ValueError(f"max_rounds_without_progress must be >= 1, got {max_rounds_without_progress}")
        super().__init__(grid)
        self.round_timeout = float(round_timeout)
        self.run_timeout = float(run_timeout)
        self.max_rounds_without_progress = max_rounds_without_progress
        self._clock = clock
        self._run_deadline = clock() + run_timeout if run_timeout else math.inf
        self._round = 0
        self._rounds_without_progress = 0

    def start_round(self, server_round: int) -> None:
        """Note that ``server_round`` begins (named by a failure); raise if the run's time is up."""
        self.check_run_deadline()
        self._round = server_round

    def record_progress(self, server_round: int, progressed: bool) -> None:
        """Count a round whose training produced no new global arrays; fail after too many in a row.

        Raises
        ------
        NoProgressError
            On the ``max_rounds_without_progress``-th such round in a row.
        """
        self._rounds_without_progress = 0 if progressed else self._rounds_without_progress + 1
        if self._rounds_without_progress >= self.max_rounds_without_progress:
            raise NoProgressError(
                f"round {server_round}: {self._rounds_without_progress} rounds in a row in which no node "
                f"finished its round ('max-rounds-without-replies'); nodes lost, failing or slower than "
                f"'round-timeout' ({self.round_timeout:g} s)"
            )

    def check_run_deadline(self) -> None:
        """Raise :class:`RunDeadlineExceeded` once the run's deadline has passed."""
        if self._clock() >= self._run_deadline:
            where = f" in round {self._round}" if self._round else " before the first round"
            raise RunDeadlineExceeded(f"the run passed its 'run-timeout' of {self.run_timeout:g} s{where}")

    def exchange_timeout(self, asked: float | None) -> float:
        """Return how long the next exchange may wait: ``asked``, at most ``round_timeout`` and the run's time left."""
        wait = min(self.round_timeout, self._run_deadline - self._clock())
        return wait if asked is None else min(asked, wait)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Send ``messages`` and return the replies that arrive within :meth:`exchange_timeout`."""
        self.check_run_deadline()
        replies = list(self.inner.send_and_receive(messages, timeout=max(0.0, self.exchange_timeout(timeout))))
        self.check_run_deadline()
        return replies

    def get_node_ids(self) -> Iterable[int]:
        """Return the connected node ids; raise once the run's time is up (ends waits for nodes)."""
        self.check_run_deadline()
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delegate to the wrapped grid, once the run's deadline is checked."""
        self.check_run_deadline()
        return self.inner.push_messages(messages)
