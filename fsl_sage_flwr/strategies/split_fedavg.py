"""Shared server side of split algorithms that average client arrays and train one server model."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords, sample_nodes
from torch import nn

from fsl_sage_flwr.core.devices import autocast
from fsl_sage_flwr.core.estimation import UnsafeStepError, server_step
from fsl_sage_flwr.core.training import derive_seed, evaluate_classifier, make_adam
from fsl_sage_flwr.data import ArrayDataset
from fsl_sage_flwr.transport.arrays import ArraySpec, state_dict_spec, to_array
from fsl_sage_flwr.transport.errors import MalformedReplyError
from fsl_sage_flwr.transport.guard import ActivationScale, IdentityRegistry, UploadLimits
from fsl_sage_flwr.transport.keys import ARRAYS_KEY, METRICS_KEY, NUM_EXAMPLES_KEY
from fsl_sage_flwr.transport.local_training import LocalTraining
from fsl_sage_flwr.transport.metrics import TrainMetricsTap
from fsl_sage_flwr.transport.replies import ParsedReply, ReplyBounds, parse_train_reply
from fsl_sage_flwr.transport.requests import request_content

WEIGHT_KEY = NUM_EXAMPLES_KEY
#: How the server steps through a round's uploads (``server-order``): client after
#: client as the paper does, or all the round's batches shuffled together.
SERVER_ORDERS = ("partition", "mixed")


class SplitServer(FedAvg):
    """What every split strategy's server holds: one server model, the client side's spec, the guards.

    The common base of :class:`SplitFedAvg` (FSL-SAGE, CSE-FSL) and the
    SplitFed baselines (Nair et al., ICML 2025, Sec. 5): the server-side model
    and its optimizer, the bounds a reply is checked against, the registry of
    node identities, the running activation scale, node sampling, server-side
    evaluation, checkpoint state and the one weighted average of client-side
    arrays (:func:`weighted_average`). How a round exchanges messages is the
    subclass's.

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
    training : LocalTraining
        The settings every client trains with; sent in each train config and
        used to bound replies. The server model uses its ``lr`` and ``weight_decay``.
    testset : ArrayDataset, optional
        Held-out data for ``evaluate_global``.
    max_examples : int
        The largest ``num-examples`` a reply may claim; partition ids must lie
        in ``[0, max_examples)`` (every partition holds a sample).
    upload_limits : UploadLimits, optional
        Bounds on uploaded activations (default ``UploadLimits()``: a cap of
        1e6, and 100 times the running scale of accepted uploads).
    max_rounds_without_replies : int
        Stop the run with an error after this many consecutive rounds in which
        no reply was accepted (it names the first reasons replies were dropped).
    node_wait_timeout : float
        Seconds to wait for ``min_available_nodes`` nodes before the run fails.
    device : torch.device or str
        Where the server keeps and trains its models (see ``fsl_sage_flwr.core.devices``).
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
        training: LocalTraining,
        testset: ArrayDataset | None = None,
        max_examples: int = 1_000_000,
        upload_limits: UploadLimits | None = None,
        max_rounds_without_replies: int = 3,
        node_wait_timeout: float = 600.0,
        device: torch.device | str = "cpu",
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
            # Flower's default would average ids too; this one keeps what means something.
            train_metrics_aggr_fn=train_metrics_aggr_fn or TrainMetricsTap(),
        )
        self.device = torch.device(device)
        self.shared_model = shared_model.to(self.device)
        self.client_model = client_model.to(self.device)
        self.server_model = server_model.to(self.device)
        self.cut_shape = tuple(cut_shape)
        self.num_classes = num_classes
        self.training = training
        self.testset = testset
        self._test_tensors: tuple[torch.Tensor, torch.Tensor] | None = None
        self.server_optimizer = make_adam(server_model, training.lr, training.weight_decay)
        self.shared_spec = state_dict_spec(shared_model.state_dict())
        self.bounds = ReplyBounds(self.cut_shape, num_classes, training, max_examples)
        self.activation_scale = ActivationScale(upload_limits or UploadLimits())
        self.identities = IdentityRegistry(max_partitions=max_examples)
        if max_rounds_without_replies < 1:
            raise ValueError(f"max_rounds_without_replies must be >= 1, got {max_rounds_without_replies}")
        self.max_rounds_without_replies = max_rounds_without_replies
        self.node_wait_timeout = node_wait_timeout
        self.round_timeout = 3600.0  # set by ``prepare_run``
        self.num_rounds: int | None = None  # set by ``prepare_run``
        self._rounds_without_replies = 0
        self._drop_reasons: list[str] = []

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
        """Run Flower's round loop (see FedAvg.start), remembering its length and timeout.

        ``timeout`` bounds every exchange with the nodes, the warm-up included.
        """
        # Flower's ``start`` keeps ``num_rounds`` and ``timeout`` to itself, yet the
        # strategy needs both: its own exchanges (warm-up, SplitFed's per-batch
        # steps) wait ``timeout``, and FSL-SAGE skips aligning after the last round.
        self.prepare_run(num_rounds, timeout)
        return super().start(
            grid,
            initial_arrays,
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
        )

    def prepare_run(self, num_rounds: int, timeout: float = 3600) -> None:
        """Remember the run's length and the timeout of every exchange.

        ``start`` calls it, and so does :func:`fsl_sage_flwr.app.rounds.run_rounds`.
        """
        self.round_timeout = float(timeout)
        self.num_rounds = num_rounds

    def initial_arrays(self) -> ArrayRecord:
        """The shared model's current state: pass it as ``start(initial_arrays=...)``."""
        return ArrayRecord(self.shared_model.state_dict())

    def summary(self) -> None:
        """Log the sampling settings (as FedAvg does) and the split-learning ones."""
        super().summary()
        training = self.training
        log(INFO, "\t├──> Split learning:")
        log(INFO, "\t│\t├──Cut-layer shape: %s | classes: %d", self.cut_shape, self.num_classes)
        log(
            INFO,
            "\t│\t├──Local training: batch %d | epochs %d | upload every %d steps as %s",
            training.batch_size,
            training.local_epochs,
            training.upload_interval,
            training.upload_dtype,
        )
        log(INFO, "\t│\t├──Adam: lr %g | weight decay %g", training.lr, training.weight_decay)
        log(INFO, "\t│\t├──Device: %s | autocast: %s", self.device, training.autocast)
        log(
            INFO,
            "\t│\t└──Stop after %d round(s) without an accepted reply; wait %.0f s for nodes",
            self.max_rounds_without_replies,
            self.node_wait_timeout,
        )

    def select_train_nodes(self, server_round: int, grid: Grid) -> list[int]:
        """Sample nodes as Flower's FedAvg does, waiting at most ``node_wait_timeout``."""
        wanted = max(int(len(list(grid.get_node_ids())) * self.fraction_train), self.min_train_nodes)
        self.wait_for_nodes(grid, max(wanted, self.min_available_nodes))
        node_ids, _ = sample_nodes(grid, self.min_available_nodes, wanted)
        return sorted(node_ids)

    def wait_for_nodes(self, grid: Grid, minimum: int) -> list[int]:
        """Return the connected node ids once ``minimum`` are; see :func:`wait_for_nodes`."""
        return wait_for_nodes(grid, minimum, self.node_wait_timeout)

    def check_progress(self, server_round: int, num_accepted: int) -> None:
        """Count rounds without an accepted reply; fail the run after too many in a row."""
        if num_accepted:
            self._rounds_without_replies = 0
            self._drop_reasons = []
            return
        self._rounds_without_replies += 1
        log(WARNING, "round %d: no reply accepted (%d round(s) in a row)", server_round, self._rounds_without_replies)
        if self._rounds_without_replies >= self.max_rounds_without_replies:
            reasons = "; ".join(self._drop_reasons[:3]) or "no node was sampled or no reply arrived"
            raise RuntimeError(
                f"{self._rounds_without_replies} rounds in a row without an accepted reply, "
                f"the run trains nothing; first reasons: {reasons}"
            )

    def evaluate_global(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Evaluate the server model on top of the averaged client model.

        Auxiliary models play no part at test time (Nair et al., ICML 2025).
        """
        if self.testset is None:
            return None
        self.shared_model.load_state_dict(arrays.to_torch_state_dict())
        if self._test_tensors is None:
            x, y = torch.from_numpy(self.testset.images), torch.from_numpy(self.testset.labels)
            self._test_tensors = (x.to(self.device), y.to(self.device))
        loss, accuracy = evaluate_classifier(nn.Sequential(self.client_model, self.server_model), *self._test_tensors)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    def server_memory_bytes(self) -> int:
        """Bytes of the tensors the server keeps: model, optimizer state."""
        return module_bytes(self.server_model) + optimizer_bytes(self.server_optimizer)

    def server_state(self) -> dict:
        """What a checkpoint holds of the server: model, optimizer, the run of rounds without replies, the guards.

        The guards are ``"activation_scale"`` and ``"identities"`` (their ``state_dict()``),
        so that a resumed run refuses the replies the uninterrupted one would.
        """
        return {
            "server_model": self.server_model.state_dict(),
            "server_optimizer": self.server_optimizer.state_dict(),
            "rounds_without_replies": self._rounds_without_replies,
            "drop_reasons": list(self._drop_reasons),
            "activation_scale": self.activation_scale.state_dict(),
            "identities": self.identities.state_dict(),
        }

    def load_server_state(self, state: dict) -> None:
        """Restore what :meth:`server_state` returned.

        The guards come back as they were; only a node id new to this run may
        take over a partition whose node was not heard from since (see
        :class:`~fsl_sage_flwr.transport.guard.IdentityRegistry`).

        Raises
        ------
        ValueError
            When ``state`` holds no guard state (a checkpoint of format 1: resuming
            it would forget every bound, so it is refused), or the guards' state
            does not fit them.
        """
        missing = [key for key in ("activation_scale", "identities") if key not in state]
        if missing:
            raise ValueError(f"server state without {missing}: an older checkpoint, which cannot be resumed")
        self.activation_scale.load_state_dict(state["activation_scale"])
        self.identities.load_state_dict(state["identities"])
        self.server_model.load_state_dict(state["server_model"])
        self.server_optimizer.load_state_dict(state["server_optimizer"])
        self._rounds_without_replies = int(state["rounds_without_replies"])
        self._drop_reasons = list(state["drop_reasons"])

    def checkpoint_saved(self) -> None:
        """Hook run once a checkpoint holding :meth:`server_state` is on disk."""

    def log_dropped(self, node_id: int, err: Exception | str) -> None:
        """Log one line naming the node of a dropped reply and the reason; keep the reason."""
        reason = f"node {node_id}{self.describe_node(node_id)}: {err}"
        log(WARNING, "dropped reply from %s", reason)
        if len(self._drop_reasons) < 10:
            self._drop_reasons.append(reason[:300])

    def describe_node(self, node_id: int) -> str:
        """Name the node's registered partition in log lines."""
        identity = self.identities.get(node_id)
        return f" (partition {identity.partition_id})" if identity else ""

    def average_shared(self, accepted: list[ParsedReply]) -> ArrayRecord:
        """FedAvg of the accepted replies' arrays, weighted by sample counts."""
        return weighted_average([(r.arrays, r.num_examples) for r in accepted], self.shared_spec)


class SplitFedAvg(SplitServer):
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

    Parameters are those of :class:`SplitServer`.
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
                self.log_dropped(msg.metadata.src_node_id, f"error reply: {msg.error.reason}")
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
        accepted = self.resolve_claims(parsed)
        self.check_progress(server_round, len(accepted))
        if not accepted:
            return None, None
        # Everything that can fail runs before the server state changes.
        metrics = self.train_metrics_aggr_fn(
            [RecordDict({METRICS_KEY: MetricRecord({**r.metrics, WEIGHT_KEY: r.num_examples})}) for r in accepted],
            WEIGHT_KEY,
        )
        arrays = self.average_shared(accepted)
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
        """Sort replies by partition id; drop all but the lowest node id of a partition claimed twice.

        A registered partition only passes ``parse_reply`` for its owner, so two
        claims in one round are two new nodes taking the same partition.
        """
        accepted: list[ParsedReply] = []
        for reply in sorted(parsed, key=lambda r: (r.partition_id, r.node_id)):
            if accepted and accepted[-1].partition_id == reply.partition_id:
                self.log_dropped(
                    reply.node_id,
                    f"partition-id {reply.partition_id} is claimed by node {accepted[-1].node_id} in the same round",
                )
            else:
                accepted.append(reply)
        return accepted

    def train_server_on(self, replies: list[ParsedReply], server_round: int) -> None:
        """One server step per uploaded batch of ``replies``, in ``server_order``.

        ``"partition"`` takes the replies one after another (in the order given)
        and each reply's batches in upload order, as the reference code does;
        ``"mixed"`` shuffles all the round's batches together (seeded by the
        round), so that the server's last steps, and its BatchNorm statistics, do
        not follow the last clients alone. The batches first enter the running
        activation scale. A step that ``server_step`` skips is logged with the
        node and the reason; :meth:`server_trained` then receives, per reply, the
        batches the model did train on, in upload order.
        """
        for reply in replies:
            self.activation_scale.accept(reply.upload.batches)
        steps = [(reply, index) for reply in replies for index in range(len(reply.upload.batches))]
        if self.server_order == "mixed":
            generator = torch.Generator().manual_seed(derive_seed(self.training.seed, server_round, "server-order"))
            steps = [steps[i] for i in torch.randperm(len(steps), generator=generator).tolist()]
        trained: dict[int, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {r.node_id: {} for r in replies}
        for reply, index in steps:
            z, y = reply.upload.batches[index]
            if z.shape[0] < 2:  # BatchNorm needs two samples in train mode
                continue
            z, y = z.to(self.device), y.to(self.device)
            try:
                with autocast(self.device, self.training.autocast):
                    server_step(self.server_model, self.server_optimizer, z, y)
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


def wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    """Return the connected node ids once ``minimum`` are connected.

    Raises
    ------
    RuntimeError
        After ``timeout`` seconds with fewer nodes connected, naming both counts.
    """
    deadline = time.monotonic() + timeout
    next_log = 0.0
    while len(node_ids := sorted(grid.get_node_ids())) < minimum:
        now = time.monotonic()
        if now >= deadline:
            raise RuntimeError(
                f"waited {timeout:.0f} s for {minimum} nodes ('min-available-nodes'), {len(node_ids)} "
                "connected: start more nodes, or lower 'min-available-nodes'"
            )
        if now >= next_log:
            log(INFO, "waiting for nodes: %d of %d connected", len(node_ids), minimum)
            next_log = now + 10.0
        time.sleep(0.5)
    return node_ids


def weighted_average(states: list[tuple[ArrayRecord, int]], spec: Mapping[str, ArraySpec]) -> ArrayRecord:
    """Average ``(arrays, weight)`` pairs by weight, as Flower's FedAvg does; keep ``spec``'s dtypes.

    Every split strategy averages through this one function: client models,
    client and auxiliary models, SplitFed-MS's server-side copies. The sum runs
    in the arrays' own precision, in the order given; integer arrays (BatchNorm
    counters) are rounded back to integers, not truncated.
    """
    records = [
        RecordDict({ARRAYS_KEY: arrays, METRICS_KEY: MetricRecord({WEIGHT_KEY: weight})}) for arrays, weight in states
    ]
    averaged = aggregate_arrayrecords(records, WEIGHT_KEY)
    return ArrayRecord(
        {name: to_array(_restore_dtype(averaged[name].numpy(), entry.dtype)) for name, entry in spec.items()}
    )


def _restore_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    # Averaging turns integer counters into floats; round them back.
    if np.dtype(dtype).kind in "iu":
        values = np.rint(values)
    return values.astype(dtype)


def module_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    return sum(t.nbytes for t in module.state_dict().values())


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of an optimizer's per-parameter state."""
    return sum(v.nbytes for slots in optimizer.state.values() for v in slots.values() if isinstance(v, torch.Tensor))
