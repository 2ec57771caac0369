"""An in-process Flower Grid: the real ServerApp and ClientApp, without Ray or a SuperLink.

Meant for tests and quick experiments. Every message goes through the ClientApp
as in a deployment, but the nodes run one after another in this process and the
records are not serialised: each side gets its own records, rebuilt from the
sender's, whose arrays share the sender's immutable ``.npy`` bytes.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run

from simulations.flower_internals import assign_message_id, set_task_identity


class InProcessGrid(Grid):
    """Deliver messages to ClientApp instances running in this process.

    Parameters
    ----------
    client_app : ClientApp
        The app every node runs.
    num_nodes : int
        Number of virtual nodes; node i gets ``partition-id`` i.
    run_config : Mapping[str, Any]
        The run config every node sees.
    node_id_seed : int
        Seeds the random node ids, which differ between runs as in Flower.
    shuffle_replies : bool
        Return replies in a random order, as a real SuperLink may.
    honour_timeout : bool
        Run the nodes of an exchange at once, each in a thread, and return only
        the replies that came before ``send_and_receive``'s ``timeout``, as a
        SuperLink does; a node that hangs is then a lost node. The ClientApp must
        then be safe to call from several threads at once. Off by default: nodes
        run one after another, which keeps runs reproducible.
    """

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        run_config: Mapping[str, Any],
        *,
        node_id_seed: int = 0,
        shuffle_replies: bool = True,
        honour_timeout: bool = False,
    ) -> None:
        rng = random.Random(node_id_seed)
        self._client_app = client_app
        self._rng = rng
        self._shuffle = shuffle_replies
        self._honour_timeout = honour_timeout
        self._run = Run.create_empty(run_id=1)
        self._contexts = {}
        for partition_id in range(num_nodes):
            node_id = rng.getrandbits(63)
            self._contexts[node_id] = Context(
                run_id=1,
                node_id=node_id,
                node_config={"partition-id": partition_id, "num-partitions": num_nodes},
                state=RecordDict(),
                run_config=dict(run_config),
            )
        self._replies: dict[str, Message] = {}
        # Messages built by the strategy read the run id from the task identity.
        set_task_identity(run_id=1)

    def set_run(self, run: Run) -> None:
        """Use ``run`` as the current run."""
        self._run = run

    @property
    def run(self) -> Run:
        """Return the current run."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Create a message to ``dst_node_id``."""
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id, ttl=ttl)

    def get_node_ids(self) -> Iterable[int]:
        """Return the ids of all virtual nodes."""
        return list(self._contexts)

    def context_of(self, partition_id: int) -> Context:
        """Return the Context of the node holding ``partition_id``."""
        return next(c for c in self._contexts.values() if c.node_config["partition-id"] == partition_id)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Run each message through its node's ClientApp and keep the reply."""
        ids = []
        for message in messages:
            assign_message_id(message, uuid.uuid4().hex)
            self._replies[message.metadata.message_id] = self._deliver(message)
            ids.append(message.metadata.message_id)
        return ids

    def _deliver(self, message: Message) -> Message:
        """Run ``message`` through its node's ClientApp; return the reply, an error reply if it raised."""
        # What a node receives is its own copy of the records, not the sender's.
        delivered = _copy_content(message)
        context = self._contexts[message.metadata.dst_node_id]
        try:
            return _copy_content(self._client_app(delivered, context))
        except Exception as err:  # a node failure becomes an error reply, as in Flower
            return Message(error=Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=delivered)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Return the replies to ``message_ids``."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push messages and return their replies, shuffled if so configured."""
        if self._honour_timeout and timeout is not None:
            replies = self._replies_before(list(messages), timeout)
        else:
            replies = list(self.pull_messages(self.push_messages(messages)))
        if self._shuffle:
            self._rng.shuffle(replies)
        return replies

    def _replies_before(self, messages: list[Message], timeout: float) -> list[Message]:
        """Run every node of the exchange in its own thread; return the replies done within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        done: dict[int, Message] = {}

        def deliver(index: int, message: Message) -> None:
            done[index] = self._deliver(message)

        workers = []
        for index, message in enumerate(messages):
            assign_message_id(message, uuid.uuid4().hex)
            # Daemon threads: a node that never answers must not keep the process alive.
            worker = threading.Thread(target=deliver, args=(index, message), daemon=True)
            worker.start()
            workers.append(worker)
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        # A reply that comes after this point is never read, as a SuperLink's would not be.
        arrived = dict(done)
        return [arrived[i] for i in sorted(arrived)]


def run_in_process(
    server_app: ServerApp,
    client_app: ClientApp,
    run_config: Mapping[str, Any],
    num_nodes: int,
    *,
    node_id_seed: int = 0,
    honour_timeout: bool = False,
) -> InProcessGrid:
    """Run ``server_app`` against ``num_nodes`` in-process nodes; return the grid.

    ``honour_timeout`` runs each exchange's nodes in threads, bounded by its timeout
    (see :class:`InProcessGrid`).
    """
    grid = InProcessGrid(client_app, num_nodes, run_config, node_id_seed=node_id_seed, honour_timeout=honour_timeout)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config))
    server_app(grid, context)
    return grid


def _copy_content(message: Message) -> Message:
    """Give the receiver its own records, rebuilt from the sender's; no serialisation.

    Each record is built anew from the sender's entries; the arrays' data, immutable
    ``.npy`` bytes, are shared rather than copied, so neither side can change what the
    other sees through them.
    """
    if not message.has_content():
        return message
    content = message.content
    message.content = RecordDict({key: type(record)(dict(record)) for key, record in content.items()})
    return message


def main(argv: list[str] | None = None) -> int:
    """Run the package's apps in this process: ``python -m simulations.in_process --nodes 4 --run-config '{...}'``.

    ``--run-config`` is a JSON object of overrides on the defaults in ``pyproject.toml``.
    """
    import argparse
    import json
    import tomllib
    from pathlib import Path

    from fsl_sage_flwr.app.client_app import app as client_app
    from fsl_sage_flwr.app.server_app import app as server_app

    parser = argparse.ArgumentParser(description="Run the ServerApp against in-process ClientApps.")
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--node-id-seed", type=int, default=0)
    parser.add_argument("--run-config", default="{}", help="JSON object of run-config overrides")
    args = parser.parse_args(argv)
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    config = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
    config.update(json.loads(args.run_config))
    run_in_process(server_app, client_app, config, args.nodes, node_id_seed=args.node_id_seed)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
