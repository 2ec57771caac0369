"""A Grid that passes every call to the Grid it wraps: the base of the layers around Flower's grid."""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run


class GridWrapper(Grid):
    """Delegate every ``Grid`` method to ``inner``; a subclass overrides only what it adds.

    The ServerApp stacks such layers around Flower's grid (byte metering,
    deadlines, resume accounting), each one a subclass of this.

    Parameters
    ----------
    grid : Grid
        The grid every call goes to.
    """

    def __init__(self, grid: Grid) -> None:
        self.inner = grid

    def set_run(self, run: Run) -> None:
        """Delegate to the wrapped grid."""
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        """Delegate to the wrapped grid."""
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Delegate to the wrapped grid."""
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Delegate to the wrapped grid."""
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delegate to the wrapped grid."""
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Delegate to the wrapped grid."""
        return self.inner.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Delegate to the wrapped grid."""
        return self.inner.send_and_receive(messages, timeout=timeout)
