"""Shared server side of split algorithms that average client arrays and train one server model."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from logging import WARNING

import math

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from torch import nn

from fsl_sage_flwr.data import ArrayDataset
from fsl_sage_flwr.estimation import server_step
from fsl_sage_flwr.training import evaluate_classifier, make_adam
from fsl_sage_flwr.wire import (
    ARRAYS_KEY,
    METRICS_KEY,
    SMASHED_KEY,
    MalformedReplyError,
    SmashedUpload,
    check_metrics,
    check_model_record,
    parse_smashed,
    reply_metric,
    state_dict_spec,
    to_array,
)

WEIGHT_KEY = "num-examples"


@dataclass(frozen=True)
class ServerTraining:
    """Hyperparameters of the server-side model and the reply bounds."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    local_epochs: int = 1
    batch_size: int = 256
    upload_interval: int = 5
    max_train_examples: int = 1_000_000

    def max_uploaded(self, num_examples: int) -> int:
        """The most samples a client of ``num_examples`` can upload in one round."""
        steps = self.local_epochs * math.ceil(num_examples / self.batch_size)
        return math.ceil(steps / self.upload_interval) * self.batch_size


@dataclass
class ParsedReply:
    """A reply that passed every check, ready to use."""

    node_id: int
    partition_id: int
    num_examples: int
    arrays: ArrayRecord | None
    upload: SmashedUpload


class SplitFedAvg(FedAvg):
    """FedAvg of the client-side arrays plus one server model trained on uploads.

    The common server of FSL-SAGE and CSE-FSL (Nair et al., ICML 2025, Sec. 3;
    Mu and Shen, CSE-FSL): each reply carries the client-side arrays and the
    ``(z, y)`` batches kept every q-th local step; the server model takes one
    optimizer step per uploaded batch, replies taken in partition-id order; the
    client-side arrays are averaged by Flower's FedAvg weighted by sample counts.
    Every reply is checked whole before it changes anything; a malformed one is
    dropped with one log line naming its node and the reason.

    Parameters
    ----------
    shared_model : nn.Module
        The module whose state dict is averaged (the client model, or client and
        auxiliary models together).
    client_model : nn.Module
        The client-side model inside ``shared_model``; evaluated with the server.
    server_model : nn.Module
        The single server-side model, trained in place.
    cut_shape : tuple[int, ...]
        Shape of one sample's cut-layer activation.
    num_classes : int
        Number of classes.
    training : ServerTraining
        Server optimizer settings and reply bounds.
    testset : ArrayDataset, optional
        Held-out data for ``evaluate_global``.
    fraction_train, min_train_nodes, min_available_nodes, train_metrics_aggr_fn
        As in Flower's FedAvg.
    """

    def __init__(
        self,
        *,
        shared_model: nn.Module,
        client_model: nn.Module,
        server_model: nn.Module,
        cut_shape: tuple[int, ...],
        num_classes: int,
        training: ServerTraining,
        testset: ArrayDataset | None = None,
        fraction_train: float = 1.0,
        min_train_nodes: int = 2,
        min_available_nodes: int = 2,
        train_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
    ) -> None:
        # No ClientApp evaluate handler exists: federated evaluation stays off and
        # the server evaluates (evaluate_global).
        super().__init__(
            fraction_train=fraction_train,
            fraction_evaluate=0.0,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=0,
            min_available_nodes=min_available_nodes,
            weighted_by_key=WEIGHT_KEY,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
        )
        self.shared_model = shared_model
        self.client_model = client_model
        self.server_model = server_model
        self.cut_shape = tuple(cut_shape)
        self.num_classes = num_classes
        self.training = training
        self.testset = testset
        self.server_optimizer = make_adam(server_model, training.lr, training.weight_decay)
        self.shared_spec = state_dict_spec(shared_model.state_dict())

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check replies, train the server model on their uploads, average the arrays.

        Replies are taken in partition-id order, so a seeded run repeats exactly
        whatever order they arrived in.
        """
        accepted: list[ParsedReply] = []
        contents: list[RecordDict] = []
        for msg in replies:
            try:
                accepted.append(self.parse_reply(msg, expect_model=True))
                contents.append(msg.content)
            except MalformedReplyError as err:
                self.log_dropped(msg, err)
        if not accepted:
            return None, None
        order = sorted(range(len(accepted)), key=lambda i: accepted[i].partition_id)
        accepted = [accepted[i] for i in order]
        # Everything that can fail runs before the server state changes.
        metrics = self.train_metrics_aggr_fn([contents[i] for i in order], WEIGHT_KEY)
        arrays = self.average_shared(accepted)
        for reply in accepted:
            self.train_server_on(reply)
        self.after_server_training(server_round, accepted)
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """No federated evaluation: the server evaluates (``evaluate_global``)."""
        return []

    def evaluate_global(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Evaluate the server model on top of the averaged client model.

        Auxiliary models play no part at test time (Nair et al., ICML 2025).
        """
        if self.testset is None:
            return None
        self.shared_model.load_state_dict(arrays.to_torch_state_dict())
        model = nn.Sequential(self.client_model, self.server_model)
        loss, accuracy = evaluate_classifier(
            model, torch.from_numpy(self.testset.images), torch.from_numpy(self.testset.labels)
        )
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    def server_memory_bytes(self) -> int:
        """Bytes of the tensors the server keeps: model, optimizer state."""
        return module_bytes(self.server_model) + optimizer_bytes(self.server_optimizer)

    # ------------------------------------------------------------ for subclasses
    def after_server_training(self, server_round: int, accepted: list[ParsedReply]) -> None:
        """Hook run after the server model trained on a round's uploads."""

    def parse_reply(self, msg: Message, *, expect_model: bool) -> ParsedReply:
        """Check a whole reply before anything changes; raise MalformedReplyError."""
        if msg.has_error():
            raise MalformedReplyError(f"error reply: {msg.error.reason}")
        content = msg.content
        check_metrics(content)
        partition_id = int(reply_metric(content, "partition-id"))
        num_examples = int(reply_metric(content, WEIGHT_KEY))
        if not 1 <= num_examples <= self.training.max_train_examples:
            raise MalformedReplyError(f"num-examples {num_examples} out of range")
        expected = {SMASHED_KEY} | ({ARRAYS_KEY} if expect_model else set())
        present = set(content.array_records)
        if present != expected:
            raise MalformedReplyError(
                f"reply carries records {sorted(present)}, expected {sorted(expected)}"
            )
        arrays = None
        if expect_model:
            arrays = content.array_records[ARRAYS_KEY]
            check_model_record(arrays, self.shared_spec)
        # A training reply holds every q-th of its steps; a warm-up reply one batch.
        bound = self.training.max_uploaded(num_examples) if expect_model else self.training.batch_size
        upload = parse_smashed(
            content.array_records[SMASHED_KEY],
            cut_shape=self.cut_shape,
            num_classes=self.num_classes,
            max_samples=bound,
            max_batch=self.training.batch_size,
        )
        return ParsedReply(msg.metadata.src_node_id, partition_id, num_examples, arrays, upload)

    def train_server_on(self, reply: ParsedReply) -> None:
        """One server step per uploaded batch, in upload order."""
        for z, y in reply.upload.batches:
            if z.shape[0] >= 2:  # BatchNorm needs two samples in train mode
                server_step(self.server_model, self.server_optimizer, z, y)

    def log_dropped(self, msg: Message, err: Exception) -> None:
        """Log one line naming the node of a dropped reply and the reason."""
        log(WARNING, "dropped reply from node %d%s: %s", msg.metadata.src_node_id, self.describe_node(msg.metadata.src_node_id), err)

    def describe_node(self, node_id: int) -> str:
        """Extra words about a node for log lines (subclasses know partitions)."""
        return ""

    def average_shared(self, accepted: list[ParsedReply]) -> ArrayRecord:
        """FedAvg of the accepted replies' arrays, weighted by sample counts."""
        records = [
            RecordDict({ARRAYS_KEY: r.arrays, METRICS_KEY: MetricRecord({WEIGHT_KEY: r.num_examples})})
            for r in accepted
        ]
        averaged = aggregate_arrayrecords(records, WEIGHT_KEY)
        # Averaging turns integer BatchNorm counters into floats; round them back.
        return ArrayRecord(
            {name: to_array(_restore_dtype(averaged[name].numpy(), spec.dtype)) for name, spec in self.shared_spec.items()}
        )


def _restore_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    if np.dtype(dtype).kind in "iu":
        values = np.rint(values)
    return values.astype(dtype)


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    return sum(t.nbytes for t in module.state_dict().values())


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of an optimizer's per-parameter state."""
    return sum(
        v.nbytes for slots in optimizer.state.values() for v in slots.values() if isinstance(v, torch.Tensor)
    )
