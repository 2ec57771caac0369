"""Server side of the split algorithms whose clients upload activations: FSL-SAGE and CSE-FSL."""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fsl_sage_flwr.core.devices import autocast
from fsl_sage_flwr.core.estimation import UnsafeStepError, server_step
from fsl_sage_flwr.core.server_order import SERVER_ORDERS, server_step_order
from fsl_sage_flwr.strategies.averaging import WEIGHT_KEY
from fsl_sage_flwr.strategies.split_server import SplitServer
from fsl_sage_flwr.transport.errors import MalformedReplyError
from fsl_sage_flwr.transport.keys import METRICS_KEY
from fsl_sage_flwr.transport.log_text import client_text
from fsl_sage_flwr.transport.replies import ParsedReply, parse_train_reply
from fsl_sage_flwr.transport.requests import request_content


class UploadTrainingServer(SplitServer):
    """FedAvg of the client-side arrays plus one server model trained on uploads.

    The common server of FSL-SAGE and CSE-FSL (Nair et al., ICML 2025, Sec. 3;
    Mu and Shen, CSE-FSL): each reply carries the client-side arrays and the
    ``(z, y)`` batches kept every q-th local step; the server model takes one
    optimizer step per uploaded batch, replies taken in partition-id order; the
    client-side arrays are averaged weighted by sample counts. Every reply is
    checked whole before it changes anything; a malformed one is dropped with
    one log line naming its node and the reason. Beyond the wire contract a
    reply must upload at least one batch, keep the partition id and stay within
    the sample count its node first declared (a partition belongs to the node
    that first took it), and its activations must stay within
    ``upload_limits``; a server step whose loss, gradients or BatchNorm
    statistics would not be finite is skipped (see ``server_step``).

    Parameters
    ----------
    server_order : str
        How the server model steps through a round's uploads, one of
        :data:`~fsl_sage_flwr.core.server_order.SERVER_ORDERS` (see
        :func:`~fsl_sage_flwr.core.server_order.server_step_order`).
    **kwargs
        As for :class:`~fsl_sage_flwr.strategies.split_server.SplitServer`.
    """

    def __init__(self, *, server_order: str = "partition", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if server_order not in SERVER_ORDERS:
            raise ValueError(f"server_order must be one of {list(SERVER_ORDERS)}, got {server_order!r}")
        self.server_order = server_order
        self._awaiting: set[int] = set()  # nodes asked this round, to name those that never replied

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the shared model and the local-training settings to the sampled nodes.

        The settings come from ``training``, not from ``config``: clients train
        with exactly the values their replies are checked against.
        """
        node_ids = self.select_train_nodes(server_round, grid)
        log(INFO, "configure_train: sampled %d nodes", len(node_ids))
        self.remember_sent(arrays)
        self._awaiting = set(node_ids)
        return [
            Message(content=self.train_request(n, server_round, arrays), dst_node_id=n, message_type=MessageType.TRAIN)
            for n in node_ids
        ]

    def train_request(self, node_id: int, server_round: int, arrays: ArrayRecord) -> RecordDict:
        """The content of one node's train request (see ``fsl_sage_flwr.transport.requests``)."""
        return request_content(arrays, server_round=server_round, training=self.training)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check replies, train the server model on their uploads, average the arrays."""
        return self.aggregate_replies(server_round, self.reply_contents(replies))

    def reply_contents(self, replies: Iterable[Message]) -> list[tuple[int, RecordDict]]:
        """``(node id, content)`` of each reply; log error replies and nodes that never replied."""
        replies = list(replies)
        contents = []
        for msg in replies:
            if msg.has_error():
                self.log_dropped(msg.metadata.src_node_id, f"error reply: {client_text(msg.error.reason)}")
            else:
                contents.append((msg.metadata.src_node_id, msg.content))
        for node_id in sorted(self._awaiting - {msg.metadata.src_node_id for msg in replies}):
            self.log_dropped(
                node_id, f"no reply within the round timeout ({self.round_timeout:.0f} s): node lost or slow"
            )
        self._awaiting = set()
        return contents

    def aggregate_replies(
        self, server_round: int, replies: Iterable[tuple[int, RecordDict]]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate ``(node id, content)`` replies; the core of ``aggregate_train``.

        Replies are taken in partition-id order, so a seeded run repeats exactly
        whatever order they arrived in.

        Raises
        ------
        RuntimeError
            When this is the ``max_rounds_without_replies``-th round in a row
            without an accepted reply.
        """
        parsed: list[ParsedReply] = []
        for node_id, content in replies:
            try:
                parsed.append(self.parse_reply(node_id, content, expect_model=True))
            except MalformedReplyError as err:
                self.log_dropped(node_id, err)
        accepted, screening = self.screen_updates(self.resolve_claims(parsed))
        self.check_progress(server_round, len(accepted))
        if not accepted:
            return None, None
        # Everything that can fail runs before the server state changes.
        metrics = self.train_metrics_aggr_fn(
            [RecordDict({METRICS_KEY: MetricRecord({**r.metrics, WEIGHT_KEY: r.num_examples})}) for r in accepted],
            WEIGHT_KEY,
        )
        arrays = self.average_shared(accepted, server_round)
        self.update_guard.accept(screening)
        for reply in accepted:
            self.identities.register(reply.node_id, reply.partition_id, reply.num_examples)
        self.train_server_on(accepted, server_round)
        self.after_server_training(server_round, accepted)
        return arrays, metrics

    def after_server_training(self, server_round: int, accepted: list[ParsedReply]) -> None:
        """Hook run after the server model trained on a round's uploads."""

    def parse_reply(self, node_id: int, content: RecordDict, *, expect_model: bool) -> ParsedReply:
        """Check a whole reply before anything changes; raise MalformedReplyError.

        On top of the wire contract: at least one uploaded batch, the node's
        identity (:class:`~fsl_sage_flwr.transport.guard.IdentityRegistry`) and the size
        of its activations (:class:`~fsl_sage_flwr.transport.guard.ActivationScale`).
        """
        reply = parse_train_reply(
            node_id, content, shared_spec=self.shared_spec if expect_model else None, bounds=self.bounds
        )
        if not reply.upload.batches:
            raise MalformedReplyError("uploads no activations")
        self.identities.check(node_id, reply.partition_id, reply.num_examples)
        self.activation_scale.check(reply.upload.batches)
        return reply

    def resolve_claims(self, parsed: list[ParsedReply]) -> list[ParsedReply]:
        """Sort replies by partition id; drop every reply of a partition claimed by two nodes or more.

        A registered partition only passes ``parse_reply`` for its owner, so two
        claims in one round are two new nodes taking the same partition: neither
        gets it, whatever their node ids (an identity fault of the setup).
        All of an exchange's drops are known then: the setup faults among them
        fail the run here (see :meth:`check_setup`), before anything registers or trains.
        """
        claimants: dict[int, list[ParsedReply]] = {}
        for reply in sorted(parsed, key=lambda r: (r.partition_id, r.node_id)):
            claimants.setdefault(reply.partition_id, []).append(reply)
        accepted: list[ParsedReply] = []
        for partition_id, replies in claimants.items():
            if len(replies) == 1:
                accepted.append(replies[0])
                continue
            nodes = " and ".join(str(r.node_id) for r in replies)
            for reply in replies:
                self.log_dropped(reply.node_id, f"partition-id {partition_id} is claimed by nodes {nodes}")
        self.check_setup()
        return accepted

    def train_server_on(self, replies: list[ParsedReply], server_round: int) -> None:
        """One server step per uploaded batch of ``replies``, in ``server_order``.

        ``"partition"`` takes the replies one after another (in the order given)
        and each reply's batches in upload order; ``"mixed"`` shuffles all the
        round's batches together (see
        :func:`~fsl_sage_flwr.core.server_order.server_step_order`). The batches first enter the running
        activation scale. A step that ``server_step`` skips is logged with the
        node and the reason; :meth:`server_trained` then receives, per reply, the
        batches the model did train on, in upload order.
        """
        for reply in replies:
            self.activation_scale.accept(reply.upload.batches)
        steps = [(reply, index) for reply in replies for index in range(len(reply.upload.batches))]
        order = server_step_order(len(steps), self.server_order, self.training.seed, server_round)
        steps = [steps[i] for i in order]
        trained: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {r.node_id: {} for r in replies}
        for reply, index in steps:
            z, y = reply.upload.batches[index]
            if z.shape[0] < 2:  # BatchNorm needs two samples in train mode
                continue
            z, y = z.to(self.device), y.to(self.device)
            try:
                with autocast(self.device, self.training.autocast):
                    server_step(self.server_model, self.server_optimizer, z, y, self.objective.loss)
            except UnsafeStepError as err:
                log(
                    WARNING,
                    "skipped server step on batch %d of node %d%s: %s",
                    index,
                    reply.node_id,
                    self.describe_node(reply.node_id),
                    err,
                )
                continue
            trained[reply.node_id][index] = (z, y)
        for reply in replies:
            batches = trained[reply.node_id]
            self.server_trained(reply, [batches[i] for i in sorted(batches)])

    def server_trained(self, reply: ParsedReply, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Hook: the server model trained on ``batches`` of ``reply`` (in upload order)."""
