"""The FSL-SAGE strategy: FedAvg of client models, server-side training, aux alignment."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from logging import INFO

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from torch import nn

from fsl_sage_flwr.alignment import align_auxiliary
from fsl_sage_flwr.buffer import SmashedBuffer
from fsl_sage_flwr.training import derive_seed, make_adam
from fsl_sage_flwr.strategies.split_fedavg import SplitFedAvg, module_bytes, optimizer_bytes
from fsl_sage_flwr.wire import MalformedReplyError, ParsedReply, request_content


@dataclass(frozen=True)
class AlignmentSettings:
    """Auxiliary alignment of FSL-SAGE (paper defaults, Nair et al., ICML 2025)."""

    interval: int = 10
    buffer_size: int = 1000
    epochs: int = 100
    batch_size: int = 1000
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0


@dataclass
class _ClientSlot:
    """What the server keeps for one client: its buffer and its aux copy."""

    partition_id: int
    buffer: SmashedBuffer
    aux: nn.Module
    aux_optimizer: torch.optim.Optimizer
    aux_pending: bool = True  # aligned since it was last delivered
    buffer_changed: bool = False


class FSLSage(SplitFedAvg):
    """FSL-SAGE: federated split learning with smashed-activation gradient estimation.

    Implements the server of Nair et al., "FSL-SAGE: Accelerating Federated Split
    Learning via Smashed Activation Gradient Estimation", ICML 2025. On top of
    :class:`SplitFedAvg` (FedAvg of client models, one server model trained on
    uploaded activations) it keeps per client a FIFO buffer of ``(z, y)`` and a
    copy of that client's auxiliary model; every ``alignment.interval`` rounds it
    aligns each auxiliary model to the server model's cut-layer gradients and
    sends it to that client only. A warm-up exchange before round 1 collects one
    batch per node and aligns the random auxiliary models on it; nodes that join
    later get the same warm-up when they are first seen.

    Parameters
    ----------
    aux_factory : Callable[[], nn.Module]
        Builds a fresh auxiliary model (the server keeps one per client).
    alignment : AlignmentSettings
        Alignment interval, buffer cap, epochs, batch size, optimizer, seed.
    **kwargs
        As for :class:`SplitFedAvg` (``shared_model`` is the client model).
    """

    def __init__(
        self, *, aux_factory: Callable[[], nn.Module], alignment: AlignmentSettings, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.aux_factory = aux_factory
        self.alignment = alignment
        self._slots: dict[int, _ClientSlot] = {}
        self._aux_in_flight: set[int] = set()
        self._timeout = 3600.0
        self._num_rounds: int | None = None

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run Flower's round loop (see FedAvg.start); round 1 begins with the warm-up.

        The warm-up runs inside round 1's ``configure_train``, after the initial
        evaluation, so round 0 measures the untrained model, as the legacy server does.
        """
        self._timeout = timeout
        self._num_rounds = num_rounds
        return super().start(
            grid,
            initial_arrays,
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
        )

    def warm_up(self, grid: Grid, arrays: ArrayRecord) -> None:
        """Register every connected node without a slot, and align its aux.

        Waits until ``min_available_nodes`` are connected. Each new node gets an
        ordinary train message flagged ``warmup`` and returns one batch of
        activations of the current client model; the server trains on it,
        buffers it and aligns that node's fresh auxiliary model.

        Raises
        ------
        RuntimeError
            When no node at all is warmed up afterwards, naming the first reasons.
        """
        new_nodes = [n for n in self._wait_for_nodes(grid) if n not in self._slots]
        if not new_nodes:
            return
        log(INFO, "warm-up: one batch of activations from each of %d new node(s)", len(new_nodes))
        messages = [
            Message(content=self.warm_up_request(arrays), dst_node_id=n, message_type=MessageType.TRAIN)
            for n in new_nodes
        ]
        replies = []
        for msg in grid.send_and_receive(messages, timeout=self._timeout):
            if msg.has_error():
                self.log_dropped(msg.metadata.src_node_id, f"error reply: {msg.error.reason}")
            else:
                replies.append((msg.metadata.src_node_id, msg.content))
        self.accept_warm_up(replies)

    def warm_up_request(self, arrays: ArrayRecord) -> RecordDict:
        """The content of a warm-up request: the client model and the ``warmup`` flag."""
        return request_content(arrays, server_round=0, training=self.training, warmup=True)

    def accept_warm_up(self, replies: Iterable[tuple[int, RecordDict]]) -> None:
        """Register the nodes of valid warm-up replies: train on, buffer and align their batch.

        Raises
        ------
        RuntimeError
            When no node at all is warmed up afterwards, naming the first reasons.
        """
        parsed = []
        for node_id, content in replies:
            try:
                parsed.append(self.parse_reply(node_id, content, expect_model=False))
            except MalformedReplyError as err:
                self.log_dropped(node_id, err)
        # A node's warm-up declares its partition and its number of samples for good.
        for reply in self.resolve_claims(parsed):
            self.identities.register(reply.node_id, reply.partition_id, reply.num_examples)
            slot = self._new_slot(reply.partition_id)
            self._slots[reply.node_id] = slot
            self.train_server_on(reply)
            self._align(slot, server_round=0)
        if not self._slots:
            reasons = "; ".join(self._drop_reasons[:3]) or "no reply arrived"
            raise RuntimeError(f"warm-up: no node warmed up, the run cannot train; first reasons: {reasons}")

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Warm up late joiners, then send the client model (and re-aligned auxes) to sampled nodes."""
        self.warm_up(grid, arrays)
        requests = self.train_requests(server_round, arrays, set(grid.get_node_ids()))
        log(INFO, "configure_train: sampled %d of %d nodes", len(requests), len(self._slots))
        return [Message(content=c, dst_node_id=n, message_type=MessageType.TRAIN) for n, c in requests]

    def train_requests(
        self, server_round: int, arrays: ArrayRecord, connected: set[int]
    ) -> list[tuple[int, RecordDict]]:
        """Sample warmed-up nodes among ``connected`` and build each one's request.

        A node's request carries its aux when the server aligned it since it last
        sent it (Nair et al., ICML 2025, Alg. 1).
        """
        self._aux_in_flight = set()
        requests = []
        for node_id in self.sample_nodes(server_round, connected):
            slot = self._slots[node_id]
            aux = None
            if slot.aux_pending:
                aux = ArrayRecord(slot.aux.state_dict())
                self._aux_in_flight.add(node_id)
            requests.append((node_id, request_content(arrays, server_round=server_round, training=self.training, aux=aux)))
        return requests

    def parse_reply(self, node_id: int, content: RecordDict, *, expect_model: bool) -> ParsedReply:
        """Check a reply; a training reply must come from a warmed-up node.

        Its partition id and sample count are bounded by the warm-up's
        (see :meth:`SplitFedAvg.parse_reply`); a warm-up reply may not claim a
        partition another node holds.
        """
        reply = super().parse_reply(node_id, content, expect_model=expect_model)
        if expect_model and node_id not in self._slots:
            raise MalformedReplyError("reply from a node that never warmed up")
        return reply

    def train_server_on(self, reply: ParsedReply) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Train the server model on a reply's uploads and buffer the batches it trained on."""
        trained = super().train_server_on(reply)
        slot = self._slots[reply.node_id]
        for z, y in trained:
            slot.buffer.append(z, y)
        slot.buffer_changed = slot.buffer_changed or bool(trained)
        return trained

    def after_server_training(self, server_round: int, accepted: list[ParsedReply]) -> None:
        """Mark delivered auxes; every ``interval`` rounds, align changed buffers."""
        for reply in accepted:
            if reply.node_id in self._aux_in_flight:
                self._slots[reply.node_id].aux_pending = False
        # An aux aligned after the last round would reach no client.
        last_round = self._num_rounds is not None and server_round >= self._num_rounds
        if server_round % self.alignment.interval == 0 and not last_round:
            for slot in sorted(self._slots.values(), key=lambda s: s.partition_id):
                if slot.buffer_changed:
                    self._align(slot, server_round)

    def is_registered(self, node_id: int) -> bool:
        """Whether ``node_id`` took part in a warm-up and has a slot."""
        return node_id in self._slots

    def server_memory_bytes(self) -> int:
        """Bytes the server keeps: server model and optimizer, aux copies, buffers."""
        total = super().server_memory_bytes()
        for slot in self._slots.values():
            total += module_bytes(slot.aux) + optimizer_bytes(slot.aux_optimizer)
            if len(slot.buffer):
                total += sum(t.nbytes for t in slot.buffer.tensors())
        return total

    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        while len(node_ids := sorted(grid.get_node_ids())) < self.min_available_nodes:
            log(INFO, "waiting for nodes: %d of %d connected", len(node_ids), self.min_available_nodes)
            time.sleep(1.0)
        return node_ids

    def sample_nodes(self, server_round: int, connected: set[int]) -> list[int]:
        """Seeded sampling over partition ids, which stay fixed while node ids do not."""
        by_partition = sorted((n for n in self._slots if n in connected), key=lambda n: self._slots[n].partition_id)
        wanted = max(int(len(by_partition) * self.fraction_train), self.min_train_nodes)
        rng = random.Random(derive_seed(self.alignment.seed, server_round, "sample"))
        chosen = set(rng.sample(by_partition, min(len(by_partition), wanted)))
        return [n for n in by_partition if n in chosen]

    def _new_slot(self, partition_id: int) -> _ClientSlot:
        torch.manual_seed(derive_seed(self.alignment.seed, partition_id, "aux-init"))
        aux = self.aux_factory()
        optimizer = make_adam(aux, self.alignment.lr, self.alignment.weight_decay)
        return _ClientSlot(partition_id, SmashedBuffer(self.alignment.buffer_size), aux, optimizer)

    def _align(self, slot: _ClientSlot, server_round: int) -> None:
        if len(slot.buffer) == 0:
            return
        z, y = slot.buffer.tensors()
        seed = derive_seed(self.alignment.seed, server_round, slot.partition_id, "align")
        report = align_auxiliary(
            slot.aux,
            slot.aux_optimizer,
            self.server_model,
            z,
            y,
            epochs=self.alignment.epochs,
            batch_size=self.alignment.batch_size,
            generator=torch.Generator().manual_seed(seed),
        )
        slot.aux_pending = True
        slot.buffer_changed = False
        log(
            INFO,
            "aligned aux of partition %d on %d samples: matching loss %.4g -> %.4g, cosine %.3f -> %.3f",
            slot.partition_id,
            report.num_samples,
            report.loss_before,
            report.loss_after,
            report.cosine_before,
            report.cosine_after,
        )
