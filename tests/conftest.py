"""Shared test helpers: reply messages and a scripted Grid."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import pytest
from flwr.app import Message, Metadata, RecordDict
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.compat.common.recorddict_compat import fitres_to_recorddict
from flwr.supercore.task_identity import TaskIdentity

from fsl_sage_flwr.wire import TrainReply


def fit_reply_content(reply: TrainReply) -> RecordDict:
    """The records a NumPyClient's ``fit`` result becomes on its way to the server."""
    arrays, num_examples, metrics = reply.to_fit_result()
    fit_res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), num_examples, metrics)
    return fitres_to_recorddict(fit_res, keep_input=False)


def reply_from(node_id: int, content: RecordDict, message_type: str = "train") -> Message:
    """Build a reply message as it arrives at the server from ``node_id``."""
    metadata = Metadata(
        run_id=1,
        message_id=f"reply-{node_id}",
        src_node_id=node_id,
        dst_node_id=0,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=3600.0,
        message_type=message_type,
    )
    return Message(content=content, metadata=metadata)


class ScriptedGrid:
    """A Grid double: fixed node ids, replies produced by a function of each message."""

    def __init__(self, node_ids: list[int], respond: Callable[[Message], Message]) -> None:
        self.node_ids = node_ids
        self.respond = respond
        self.sent: list[Message] = []

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        self.sent.extend(messages)
        return [self.respond(m) for m in messages]


@pytest.fixture(autouse=True)
def _task_identity():
    """Strategies build messages, which read the run id of the current task."""
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = 0
    TaskIdentity.task_id = 0
    yield
