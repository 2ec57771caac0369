"""The one place where this project reaches into Flower's internals (tied to Flower 1.42).

Flower's public API has no way to do two things that an in-process Grid and the
tests need, because in a deployment the SuperLink and the SuperExec do them:

- :func:`assign_message_id` writes the private ``_message_id`` attribute of a
  message's ``Metadata``; the SuperLink assigns message ids and ``Metadata``
  exposes no setter for them.
- :func:`set_task_identity` sets the class attributes of
  ``flwr.supercore.task_identity.TaskIdentity``, from which ``Message(...)``
  reads the run id when a strategy builds a message outside a real run.

Both depend on how Flower 1.42 lays out these objects and may break on another
release; keep any further reaching-in here, so that an upgrade has one file to check.
"""

from __future__ import annotations

from flwr.app import Message
from flwr.supercore.task_identity import TaskIdentity


def assign_message_id(message: Message, message_id: str) -> None:
    """Give ``message`` the id the SuperLink would assign to it.

    Parameters
    ----------
    message : Message
        The message to label; changed in place.
    message_id : str
        The id ``message.metadata.message_id`` reports from now on.
    """
    if not isinstance(message_id, str) or not message_id:
        raise ValueError(f"message_id must be a non-empty str, got {message_id!r}")
    # Metadata keeps the id in a private slot without a setter (Flower 1.42).
    message.metadata.__dict__["_message_id"] = message_id


def set_task_identity(run_id: int, node_id: int = 0, task_id: int = 0) -> None:
    """Set the run, node and task ids that new messages are stamped with.

    Parameters
    ----------
    run_id : int
        The run id ``Message(...)`` puts in new metadata.
    node_id : int
        The node the current process acts as (0: the ServerApp).
    task_id : int
        The id of the current task.
    """
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = node_id
    TaskIdentity.task_id = task_id
