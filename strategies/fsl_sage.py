"""The FSL-SAGE strategy: FedAvg of client models, server-side training, aux alignment."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from torch import nn

from fsl_sage_flwr.alignment import align_auxiliary
from fsl_sage_flwr.buffer import SmashedBuffer
from fsl_sage_flwr.data import ArrayDataset
from fsl_sage_flwr.estimation import server_step
from fsl_sage_flwr.ledger import ByteLedger
from fsl_sage_flwr.training import derive_seed, evaluate_classifier, make_adam
from fsl_sage_flwr.wire import (
    ARRAYS_KEY,
    AUX_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    SMASHED_KEY,
    WARMUP_ACTION,
    MalformedReplyError,
    SmashedUpload,
    check_model_record,
    parse_smashed,
    reply_metric,
    state_dict_spec,
    to_array,
)

WEIGHT_KEY = "num-examples"


@dataclass(frozen=True)
class FSLSageServerConfig:
    """Server-side hyperparameters of FSL-SAGE (paper defaults, Nair et al., ICML 2025)."""

    align_interval: int = 10
    buffer_size: int = 1000
    align_epochs: int = 100
    align_batch_size: int = 1000
    align_lr: float = 1e-3
    lr: float = 1e-3
    weight_decay: float = 1e-4
    local_epochs: int = 1
    max_train_examples: int = 1_000_000
    seed: int = 0


@dataclass
class _ClientSlot:
    """What the server keeps for one client: its buffer and its aux copy."""

    partition_id: int
    buffer: SmashedBuffer
    aux: nn.Module
    aux_optimizer: torch.optim.Optimizer
    aux_pending: bool = True  # aligned since last delivered
    buffer_changed: bool = False


@dataclass
class _ParsedReply:
    node_id: int
    partition_id: int
    num_examples: int
    arrays: ArrayRecord | None
    upload: SmashedUpload
    content: RecordDict


class FSLSage(FedAvg):
    """FSL-SAGE: federated split learning with smashed-activation gradient estimation.

    Implements the server of Nair et al., "FSL-SAGE: Accelerating Federated Split
    Learning via Smashed Activation Gradient Estimation", ICML 2025. Client-side
    models are averaged by Flower's FedAvg; the single server-side model trains on
    each reply's uploaded activations; every ``align_interval`` rounds each
    client's auxiliary model is aligned to the server model's cut-layer gradients
    and sent down to that client only. A warm-up exchange before round 1 collects
    one batch per client and aligns the random auxiliary models on it.

    Replies that break the wire contract (``fsl_sage_flwr.wire``) are dropped
    with one log line naming the node and the reason; the server state stays as
    it was and the round goes on with the others.

    Parameters
    ----------
    client_model : nn.Module
        A client-side model; gives the expected arrays and evaluates the average.
    server_model : nn.Module
        The server-side model, trained in place.
    aux_factory : Callable[[], nn.Module]
        Builds a fresh auxiliary model (the server keeps one per client).
    cut_shape : tuple[int, ...]
        Shape of one sample's cut-layer activation.
    num_classes : int
        Number of classes.
    config : FSLSageServerConfig
        Server-side hyperparameters.
    testset : ArrayDataset, optional
        Held-out data for the server-side evaluation of ``evaluate_global``.
    fraction_train, min_train_nodes, min_available_nodes
        As in Flower's FedAvg; sampling is seeded and ordered by partition id.
    """

    def __init__(
        self,
        *,
        client_model: nn.Module,
        server_model: nn.Module,
        aux_factory: Callable[[], nn.Module],
        cut_shape: tuple[int, ...],
        num_classes: int,
        config: FSLSageServerConfig,
        testset: ArrayDataset | None = None,
        fraction_train: float = 1.0,
        min_train_nodes: int = 2,
        min_available_nodes: int = 2,
    ) -> None:
        # No ClientApp evaluate handler exists: federated evaluation stays off and
        # evaluation runs on the server (evaluate_global).
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=0.0,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=0,
            min_available_nodes=min_available_nodes,
            weighted_by_key=WEIGHT_KEY,
        )
        self.client_model = client_model
        self.server_model = server_model
        self.aux_factory = aux_factory
        self.cut_shape = tuple(cut_shape)
        self.num_classes = num_classes
        self.config = config
        self.testset = testset
        self.ledger = ByteLedger()
        self.server_optimizer = make_adam(server_model, config.lr, config.weight_decay)
        self._client_spec = state_dict_spec(client_model.state_dict())
        self._slots: dict[int, _ClientSlot] = {}
        self._aux_in_flight: set[int] = set()
        self._timeout = 3600.0

    # ------------------------------------------------------------------ start
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
        """Run the warm-up exchange, then Flower's round loop (see FedAvg.start)."""
        self._timeout = timeout
        self.warm_up(grid, initial_arrays, train_config or ConfigRecord(), server_round=0)
        return super().start(
            grid,
            initial_arrays,
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
        )

    def warm_up(
        self, grid: Grid, arrays: ArrayRecord, config: ConfigRecord, server_round: int
    ) -> None:
        """Register every connected node that has no slot yet and align its aux.

        Waits until ``min_available_nodes`` are connected. Each new node returns one
        batch of activations of the current client model; the server trains on
        it, buffers it and aligns that node's fresh auxiliary model.
        """
        node_ids = self._wait_for_nodes(grid)
        new_nodes = [n for n in node_ids if n not in self._slots]
        if not new_nodes:
            return
        log(INFO, "warm-up: collecting one batch from %d new node(s)", len(new_nodes))
        record = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: config})
        messages = [
            Message(content=record, dst_node_id=n, message_type=f"{MessageType.TRAIN}.{WARMUP_ACTION}")
            for n in new_nodes
        ]
        replies = list(grid.send_and_receive(messages, timeout=self._timeout))
        parsed = []
        for msg in replies:
            try:
                parsed.append(self._parse_reply(msg, expect_model=False))
            except MalformedReplyError as err:
                self._log_dropped(msg, err)
        for reply in sorted(parsed, key=lambda r: r.partition_id):
            self.ledger.add_down(server_round, reply.partition_id, record)
            self.ledger.add_up(server_round, reply.partition_id, reply.content)
            slot = self._new_slot(reply.partition_id)
            self._slots[reply.node_id] = slot
            self._train_server_on(slot, reply.upload)
            self._align(slot, server_round)

    # --------------------------------------------------------------- training
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the client model, and a node's aux when it was re-aligned, to sampled nodes."""
        self.warm_up(grid, arrays, config, server_round)  # nodes that joined late
        node_ids = self._sample(server_round)
        log(INFO, "configure_train: sampled %d of %d nodes", len(node_ids), len(self._slots))
        config = ConfigRecord({**dict(config), "server-round": server_round})
        messages = []
        self._aux_in_flight = set()
        for node_id in node_ids:
            slot = self._slots[node_id]
            content = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: config})
            if slot.aux_pending:
                content[AUX_KEY] = ArrayRecord(slot.aux.state_dict())
                self._aux_in_flight.add(node_id)
            self.ledger.add_down(server_round, slot.partition_id, content)
            messages.append(Message(content=content, dst_node_id=node_id, message_type=MessageType.TRAIN))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate replies, train the server model on uploads, FedAvg client models.

        Replies are processed in partition-id order so that a seeded run repeats
        exactly, whatever order they arrived in.
        """
        replies = list(replies)
        accepted: list[_ParsedReply] = []
        for msg in replies:
            if msg.has_error():
                log(WARNING, "node %d replied with an error: %s", msg.metadata.src_node_id, msg.error.reason)
                continue
            slot = self._slots.get(msg.metadata.src_node_id)
            if slot is not None:
                self.ledger.add_up(server_round, slot.partition_id, msg.content)
            try:
                accepted.append(self._parse_reply(msg, expect_model=True))
            except MalformedReplyError as err:
                self._log_dropped(msg, err)
        if not accepted:
            return None, None
        accepted.sort(key=lambda r: r.partition_id)

        losses = []
        for reply in accepted:
            slot = self._slots[reply.node_id]
            losses.append(self._train_server_on(slot, reply.upload))
            if reply.node_id in self._aux_in_flight:
                slot.aux_pending = False
        if server_round % self.config.align_interval == 0:
            for slot in sorted(self._slots.values(), key=lambda s: s.partition_id):
                if slot.buffer_changed:
                    self._align(slot, server_round)

        arrays = self._fedavg(accepted)
        total = sum(r.num_examples for r in accepted)
        metrics = MetricRecord(
            {
                "server-train-loss": float(np.mean([l for l in losses if l is not None] or [0.0])),
                "num-replies": len(accepted),
                WEIGHT_KEY: total,
            }
        )
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: the server evaluates (``evaluate_global``)."""
        return []

    # ------------------------------------------------------------- evaluation
    def evaluate_global(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Evaluate the server model on top of the averaged client model.

        The auxiliary models play no part at test time (Nair et al., ICML 2025).
        """
        if self.testset is None:
            return None
        self.client_model.load_state_dict(arrays.to_torch_state_dict())
        model = nn.Sequential(self.client_model, self.server_model)
        loss, accuracy = evaluate_classifier(
            model, torch.from_numpy(self.testset.images), torch.from_numpy(self.testset.labels)
        )
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    # ---------------------------------------------------------------- helpers
    def _wait_for_nodes(self, grid: Grid) -> list[int]:
        while len(node_ids := sorted(grid.get_node_ids())) < self.min_available_nodes:
            log(INFO, "waiting for nodes: %d of %d connected", len(node_ids), self.min_available_nodes)
            time.sleep(1.0)
        return node_ids

    def _sample(self, server_round: int) -> list[int]:
        by_partition = sorted(self._slots, key=lambda n: self._slots[n].partition_id)
        size = min(len(by_partition), max(int(len(by_partition) * self.fraction_train), self.min_train_nodes))
        rng = random.Random(derive_seed(self.config.seed, server_round, "sample"))
        chosen = set(rng.sample(by_partition, size))
        return [n for n in by_partition if n in chosen]

    def _new_slot(self, partition_id: int) -> _ClientSlot:
        torch.manual_seed(derive_seed(self.config.seed, partition_id, "aux-init"))
        aux = self.aux_factory()
        optimizer = make_adam(aux, self.config.align_lr, self.config.weight_decay)
        return _ClientSlot(partition_id, SmashedBuffer(self.config.buffer_size), aux, optimizer)

    def _parse_reply(self, msg: Message, *, expect_model: bool) -> _ParsedReply:
        """Check a whole reply before anything is changed; raise MalformedReplyError."""
        if msg.has_error():
            raise MalformedReplyError(f"error reply: {msg.error.reason}")
        content = msg.content
        node_id = msg.metadata.src_node_id
        partition_id = int(reply_metric(content, "partition-id"))
        if expect_model:
            slot = self._slots.get(node_id)
            if slot is None:
                raise MalformedReplyError("reply from a node that never warmed up")
            if slot.partition_id != partition_id:
                raise MalformedReplyError(
                    f"partition-id {partition_id} differs from the warm-up's {slot.partition_id}"
                )
        num_examples = int(reply_metric(content, WEIGHT_KEY))
        if not 1 <= num_examples <= self.config.max_train_examples:
            raise MalformedReplyError(f"num-examples {num_examples} out of range")
        arrays = None
        if expect_model:
            if ARRAYS_KEY not in content.array_records:
                raise MalformedReplyError("reply lacks the client model arrays")
            arrays = content.array_records[ARRAYS_KEY]
            check_model_record(arrays, self._client_spec)
        if SMASHED_KEY not in content.array_records:
            raise MalformedReplyError("reply lacks the smashed activations")
        extra = set(content.array_records) - {ARRAYS_KEY, SMASHED_KEY}
        if extra:
            raise MalformedReplyError(f"reply carries unexpected records {sorted(extra)}")
        bound = num_examples * (self.config.local_epochs if expect_model else 1)
        upload = parse_smashed(
            content.array_records[SMASHED_KEY],
            cut_shape=self.cut_shape,
            num_classes=self.num_classes,
            max_samples=bound,
        )
        return _ParsedReply(node_id, partition_id, num_examples, arrays, upload, content)

    def _train_server_on(self, slot: _ClientSlot, upload: SmashedUpload) -> float | None:
        losses = []
        for z, y in upload.batches:
            if z.shape[0] >= 2:  # BatchNorm needs two samples in train mode
                losses.append(server_step(self.server_model, self.server_optimizer, z, y))
            slot.buffer.append(z, y)
        slot.buffer_changed = slot.buffer_changed or bool(upload.batches)
        return float(np.mean(losses)) if losses else None

    def _align(self, slot: _ClientSlot, server_round: int) -> None:
        if len(slot.buffer) == 0:
            return
        z, y = slot.buffer.tensors()
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, server_round, slot.partition_id, "align"))
        report = align_auxiliary(
            slot.aux,
            slot.aux_optimizer,
            self.server_model,
            z,
            y,
            epochs=self.config.align_epochs,
            batch_size=self.config.align_batch_size,
            generator=generator,
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

    def _fedavg(self, accepted: list[_ParsedReply]) -> ArrayRecord:
        records = [
            RecordDict({ARRAYS_KEY: r.arrays, METRICS_KEY: MetricRecord({WEIGHT_KEY: r.num_examples})})
            for r in accepted
        ]
        averaged = aggregate_arrayrecords(records, WEIGHT_KEY)
        # Averaging turns integer BatchNorm counters into floats; restore dtypes.
        return ArrayRecord(
            {
                name: to_array(averaged[name].numpy().astype(spec.dtype))
                for name, spec in self._client_spec.items()
            }
        )

    def _log_dropped(self, msg: Message, err: Exception) -> None:
        slot = self._slots.get(msg.metadata.src_node_id)
        where = f" (partition {slot.partition_id})" if slot else ""
        log(WARNING, "dropped reply from node %d%s: %s", msg.metadata.src_node_id, where, err)


