"""The FSL-SAGE strategy: FedAvg of client models, server-side training, aux alignment."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from torch import nn

from fsl_sage_flwr.core.alignment import AlignmentSettings
from fsl_sage_flwr.core.alignment_schedule import AlignmentBudget, AlignmentCandidate, plan_alignment
from fsl_sage_flwr.core.checkpoint import ClientState, ClientStore
from fsl_sage_flwr.core.client_slots import ClientSlot, ClientSlots, ClientStatus
from fsl_sage_flwr.core.client_states import ClientStateFactory
from fsl_sage_flwr.core.fidelity import Fidelity, gradient_fidelity
from fsl_sage_flwr.core.fidelity_stats import FidelityLog, fidelity_sample
from fsl_sage_flwr.core.node_sampling import WARM_UP_MODES, WarmUpTries, sample_round_nodes
from fsl_sage_flwr.core.settings import require_argument
from fsl_sage_flwr.strategies.aux_alignment import AuxAligner, log_alignment_settings
from fsl_sage_flwr.strategies.upload_training import UploadTrainingServer
from fsl_sage_flwr.transport.errors import MalformedReplyError
from fsl_sage_flwr.transport.replies import ParsedReply
from fsl_sage_flwr.transport.requests import request_content


class FSLSage(UploadTrainingServer):
    """FSL-SAGE: federated split learning with smashed-activation gradient estimation.

    Implements the server of Nair et al., "FSL-SAGE: Accelerating Federated Split
    Learning via Smashed Activation Gradient Estimation", ICML 2025. On top of
    :class:`UploadTrainingServer` (FedAvg of client models, one server model trained on
    uploaded activations) it keeps per client a FIFO buffer of ``(z, y)`` and a
    copy of that client's auxiliary model; every ``alignment.interval`` rounds it
    aligns each auxiliary model to the server model's cut-layer gradients and
    sends it to that client only. A warm-up exchange collects one batch of a node
    and aligns its random auxiliary model on it: when the node is first sampled
    (``warm_up="sampled"``), so that the work before a round grows with the nodes
    sampled, not with the federation; or for every connected node before round 1
    and every later arrival (``warm_up="all"``).

    Parameters
    ----------
    aux_factory : Callable[[], nn.Module]
        Builds a fresh auxiliary model (the server keeps one per client).
    alignment : AlignmentSettings
        Alignment interval, buffer cap, epochs, batch size, optimizer, seed.
    warm_up_attempts : int
        How often a node whose warm-up fails is asked again (once per round).
    warm_up : str
        ``"sampled"`` or ``"all"``: the same rounds when every node is sampled. With
        ``fraction_train`` < 1, ``"sampled"`` draws nodes not yet warmed up by node id
        (random in Flower's simulation); ``"all"`` draws on partition ids only.
    state_dir : Path, optional
        Folder for per-client state (aux model, aux optimizer, buffer): at most ``max_cached_clients``
        clients' state stays in memory, the rest in one file per client. Without it all stays in memory.
    max_cached_clients : int
        Clients whose state is held in memory at most, with ``state_dir``.
    fidelity_samples : int
        Samples of each upload on which the server measures gradient fidelity
        (see :meth:`measure_fidelity`); 0 turns the measurement off.
    **kwargs
        As for :class:`UploadTrainingServer` (``shared_model`` is the client model).
    """

    def __init__(
        self,
        *,
        aux_factory: Callable[[], nn.Module],
        alignment: AlignmentSettings,
        warm_up_attempts: int = 3,
        warm_up: str = "sampled",
        state_dir: Path | None = None,
        max_cached_clients: int = 64,
        fidelity_samples: int = 64,
        **kwargs: Any,
    ) -> None:
        require_argument(fidelity_samples >= 0, "fidelity_samples", fidelity_samples, ">= 0")
        require_argument(warm_up in WARM_UP_MODES, "warm_up", warm_up, f"one of {list(WARM_UP_MODES)}")
        if alignment.threshold > 0 and fidelity_samples == 0:
            raise ValueError("adaptive alignment (alignment.threshold > 0) acts on fidelity: set fidelity_samples > 0")
        super().__init__(**kwargs)
        self.aux_factory = aux_factory
        self.alignment = alignment
        self._states = ClientStateFactory(aux_factory, alignment, self.device)
        self._store = ClientStore(self._states.empty, state_dir, max_cached_clients)
        self._slots = ClientSlots(self._store)
        self._aux_in_flight: set[int] = set()
        self.warm_up_attempts = warm_up_attempts
        self._warm_up_tries = WarmUpTries(warm_up_attempts)
        self.warm_up_mode = warm_up
        self._round_sample: tuple[int, list[int]] | None = None  # (round, sampled node ids)
        self._warmed_up = 0  # nodes warmed up since the last summary
        self._aligner = AuxAligner(self._store, self.device, self.objective.loss)
        self.fidelity_samples = fidelity_samples
        self._fidelity_log = FidelityLog()
        self._round_cosines: dict[int, float] = {}  # this round's fidelity, by partition id
        self._budget = AlignmentBudget()

    def summary(self) -> None:
        """Log the split-learning settings and FSL-SAGE's alignment ones."""
        super().summary()
        log_alignment_settings(self.alignment, self.warm_up_mode, self.warm_up_attempts)

    def warm_up(self, grid: Grid, arrays: ArrayRecord) -> None:
        """Warm up every connected node without a slot (see :meth:`warm_up_nodes`).

        Only the first warm-up waits until ``min_available_nodes`` are connected.
        """
        new_nodes = [n for n in self._connected(grid) if n not in self._slots and self.may_warm_up(n)]
        self.warm_up_nodes(grid, arrays, new_nodes)

    def warm_up_nodes(self, grid: Grid, arrays: ArrayRecord, node_ids: list[int]) -> None:
        """Warm up ``node_ids``: a train message flagged ``warmup`` to each (see :meth:`accept_warm_up`).

        Raises
        ------
        RuntimeError
            When no node at all is warmed up afterwards, naming the first reasons.
        """
        if not node_ids:
            return
        log(INFO, "warm-up: one batch of activations from each of %d new node(s)", len(node_ids))
        messages = [
            Message(content=self.warm_up_request(arrays), dst_node_id=n, message_type=MessageType.TRAIN)
            for n in node_ids
        ]
        self._awaiting = set(node_ids)
        replies = self.reply_contents(grid.send_and_receive(messages, timeout=self.round_timeout))
        self.accept_warm_up(replies)

    def nodes_to_warm_up(self, server_round: int, connected: set[int]) -> list[int]:
        """The nodes of ``connected`` to warm up before ``server_round``'s requests.

        Every new one with ``warm_up="all"``; with ``"sampled"``, the new ones among
        the round's sample. Each is counted as an attempt (:meth:`may_warm_up`).
        """
        candidates = sorted(connected) if self.warm_up_mode == "all" else self.sample_nodes(server_round, connected)
        return [n for n in candidates if n not in self._slots and self.may_warm_up(n)]

    def _connected(self, grid: Grid) -> list[int]:
        # Only the first call waits; later rounds take whoever is connected.
        if self._slots:
            return sorted(grid.get_node_ids())
        return self.wait_for_nodes(grid, self.min_available_nodes)

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
            if self._slots.claim_restored(reply.partition_id, reply.node_id):
                log(INFO, "node %d is partition %d of the checkpoint", reply.node_id, reply.partition_id)
                continue
            slot = self._new_slot(reply.node_id, reply.partition_id)
            self._warmed_up += 1
            self.train_server_on([reply], server_round=0)
            self._aligner.align_one(slot, self.server_model, self.alignment, server_round=0)
        if not self._slots:
            reasons = "; ".join(self._drop_reasons[:3]) or "no reply arrived"
            raise RuntimeError(f"warm-up: no node warmed up, the run cannot train; first reasons: {reasons}")

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Warm up the new nodes due, then send the client model (and aligned auxes) to the sampled ones."""
        connected = set(self._connected(grid))
        self.warm_up_nodes(grid, self.remember_sent(arrays), self.nodes_to_warm_up(server_round, connected))
        requests = self.train_requests(server_round, arrays, connected)
        log(INFO, "configure_train: sampled %d of %d nodes", len(requests), len(self._slots))
        self._awaiting = {node_id for node_id, _ in requests}
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
        sampled = [n for n in self.sample_nodes(server_round, connected) if n in self._slots]
        for node_id in sorted(sampled, key=lambda n: self._slots[n].partition_id):
            slot = self._slots[node_id]
            aux = None
            if slot.aux_pending:
                aux = ArrayRecord(slot.state.aux.state_dict())
                self._aux_in_flight.add(node_id)
            requests.append(
                (node_id, request_content(arrays, server_round=server_round, training=self.training, aux=aux))
            )
        return requests

    def parse_reply(self, node_id: int, content: RecordDict, *, expect_model: bool) -> ParsedReply:
        """Check a reply; a training reply must come from a warmed-up node.

        Its partition id and sample count are bounded by the warm-up's
        (see :meth:`UploadTrainingServer.parse_reply`); a warm-up reply may not claim a
        partition another node holds.
        """
        reply = super().parse_reply(node_id, content, expect_model=expect_model)
        if expect_model:
            slot = self._slots.get(node_id)
            if slot is None:
                raise MalformedReplyError("reply from a node that never warmed up")
            slot.restored = False
        return reply

    def train_server_on(self, replies: list[ParsedReply], server_round: int) -> None:
        """Measure each reply's gradient fidelity, then train the server model on the uploads."""
        self._round_cosines = {}
        for reply in replies:
            self.measure_fidelity(reply)
        super().train_server_on(replies, server_round)

    def server_trained(self, reply: ParsedReply, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Buffer the batches of ``reply`` the server model trained on."""
        slot = self._slots[reply.node_id]
        if batches:
            buffer = slot.state.buffer
            for z, y in batches:
                buffer.append(z, y)
            self._store.changed(slot.partition_id)
            slot.buffer_changed = True

    def measure_fidelity(self, reply: ParsedReply) -> Fidelity | None:
        """Compare the reply's client's aux estimate with the true cut-layer gradient.

        Uses the server model as it is before it trains on this round's uploads
        (so every client of a round is measured against the same model), on the first
        ``fidelity_samples`` samples of the upload's first batch of at least two
        (a view, no copy). Weights and BatchNorm statistics stay unchanged. No
        communication: the server holds both the upload and the aux copy.
        """
        sample = fidelity_sample(reply.upload.batches, self.fidelity_samples)
        if sample is None:
            return None
        z, y = (t.to(self.device) for t in sample)
        slot = self._slots[reply.node_id]
        fidelity = gradient_fidelity(slot.state.aux, self.server_model, z, y, self.objective.loss)
        self._fidelity_log.record(slot.partition_id, fidelity)
        self._round_cosines[slot.partition_id] = fidelity.cosine
        return fidelity

    def after_server_training(self, server_round: int, accepted: list[ParsedReply]) -> None:
        """Mark delivered auxes, then align the auxes due this round.

        Every ``alignment.interval`` rounds all changed buffers (the paper); in the
        rounds between, with adaptive alignment, the clients whose fidelity fell
        under ``alignment.threshold``.
        """
        for reply in accepted:
            if reply.node_id in self._aux_in_flight:
                self._slots[reply.node_id].aux_pending = False
        candidates = [
            AlignmentCandidate(slot.partition_id, slot.buffer_changed, self._round_cosines.get(slot.partition_id))
            for _, slot in self._slots.by_partition()
        ]
        plan = plan_alignment(
            server_round, self.num_rounds, self.alignment, candidates, self._budget, self._states.aux_nbytes
        )
        due = [self._slots.find(partition_id)[1] for partition_id in plan.due]
        self._aligner.run(plan, due, self.server_model, self.alignment, server_round)

    def is_registered(self, node_id: int) -> bool:
        """Whether ``node_id`` took part in a warm-up and has a slot."""
        return node_id in self._slots

    def known_partitions(self) -> dict[int, int]:
        """Partition id -> node id of every client the server keeps state for, by partition id."""
        return {slot.partition_id: node_id for node_id, slot in self._slots.by_partition()}

    def client_state(self, partition_id: int) -> ClientState:
        """The server's state of one client: its aux model, the aux's optimizer and its buffer of uploads.

        The live objects, loaded from ``state_dir`` if not cached; read them, do
        not change them. Raises ``KeyError`` for a partition no node warmed up.
        """
        return self._slots.find(partition_id)[1].state

    def client_status(self, partition_id: int) -> ClientStatus:
        """Whether one client's aux awaits delivery and its buffer changed since its last alignment.

        Raises ``KeyError`` for a partition no node warmed up.
        """
        node_id, slot = self._slots.find(partition_id)
        return slot.status(node_id)

    def initial_aux(self, partition_id: int) -> nn.Module:
        """A fresh aux model for ``partition_id``, as the server builds it when the client first warms up.

        Seeded by ``alignment.seed`` and the partition; leaves the global RNG alone.
        """
        return self._states.initial_aux(partition_id)

    def server_memory_bytes(self) -> int:
        """Bytes the server keeps: server model and optimizer, aux copies, buffers."""
        return super().server_memory_bytes() + self._store.nbytes()

    def state_dict(self) -> dict[str, Any]:
        """The server's state for a checkpoint: server model and optimizer, and every client's.

        Per-client state is written to the store's files (or embedded, without a
        folder); call :meth:`checkpoint_saved` once the checkpoint is on disk.
        """
        return {
            **super().state_dict(),
            "slots": self._slots.state_dict(),
            "clients": self._store.state_dict(),
            "triggered_align_bytes": self._budget.spent_bytes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`.

        A resumed run is a new Flower run, whose clients start with empty state:
        every aux travels again with its client's next request. A client that
        comes back under a new node id is recognised in the warm-up by its
        partition id.
        """
        super().load_state_dict(state)
        self._store.load_state_dict(state["clients"])
        self._budget.spent_bytes = int(state.get("triggered_align_bytes", 0))
        self._slots.load_state_dict(state["slots"])

    def checkpoint_saved(self) -> None:
        """The checkpoint naming the store's files is on disk: drop superseded client files."""
        self._store.commit()

    def may_warm_up(self, node_id: int, *, count: bool = True) -> bool:
        """Count a warm-up attempt of ``node_id`` (unless ``count`` is false); False once it has used them all."""
        if not count and self._warm_up_tries.left(node_id):
            return True
        allowed = self._warm_up_tries.take(node_id)
        if self._warm_up_tries.first_refusal(node_id):
            log(WARNING, "node %d failed its warm-up %d times; it is not asked again", node_id, self.warm_up_attempts)
        return allowed

    def sample_nodes(self, server_round: int, connected: set[int]) -> list[int]:
        """The round's seeded sample of ``connected`` nodes, drawn once per round.

        The pool lists warmed-up nodes by partition id, which stays fixed while
        node ids do not; with ``warm_up="sampled"`` the nodes that may still warm
        up follow, by node id. See :func:`~fsl_sage_flwr.core.node_sampling.sample_round_nodes`.
        """
        if self._round_sample is not None and self._round_sample[0] == server_round:
            return self._round_sample[1]
        pool = [n for n, _ in self._slots.by_partition() if n in connected]
        if self.warm_up_mode == "sampled":
            # A node out of warm-up attempts leaves the pool; may_warm_up says so once.
            pool += [n for n in sorted(connected) if n not in self._slots and self.may_warm_up(n, count=False)]
        sample = sample_round_nodes(pool, self.fraction_train, self.min_train_nodes, self.alignment.seed, server_round)
        self._round_sample = (server_round, sample)
        return sample

    def _new_slot(self, node_id: int, partition_id: int) -> ClientSlot:
        self._store.add(partition_id, self._states.new(partition_id))
        return self._slots.add(node_id, partition_id)

    def pop_alignment_summary(self) -> dict[str, Any]:
        """Sum up the alignments and fidelity measurements since the last call.

        Alignments: count, epochs, seconds, mean cosines before and after; with
        adaptive alignment, how many the fidelity threshold triggered and the aux
        bytes they have cost in the run so far.
        Fidelity (see :meth:`measure_fidelity`): mean and minimum cosine, mean
        relative error, and per partition (keys are partition ids as strings)
        the mean cosine and relative error of that round. Empty when neither
        ran. The ServerApp adds it to each round's results row.
        """
        summary = self._fidelity_log.pop_summary()
        if self._warmed_up:
            summary["nodes_warmed_up"], self._warmed_up = self._warmed_up, 0
        if self.alignment.threshold > 0:
            summary["alignments_triggered"] = self._budget.pop_triggered()
            summary["triggered_align_bytes"] = self._budget.spent_bytes
        return {**summary, **self._aligner.pop_summary()}
