"""SplitFed baselines: per-batch activations up and cut-layer gradients down, through Flower messages."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from torch import nn

from fsl_sage_flwr.core.devices import autocast
from fsl_sage_flwr.core.estimation import UnsafeStepError, server_step
from fsl_sage_flwr.core.memory import optimizer_nbytes, state_nbytes
from fsl_sage_flwr.core.training import make_adam
from fsl_sage_flwr.strategies.averaging import WEIGHT_KEY, weighted_average
from fsl_sage_flwr.strategies.split_server import SplitServer
from fsl_sage_flwr.transport.arrays import check_model_record, state_dict_spec, to_array
from fsl_sage_flwr.transport.errors import MalformedReplyError
from fsl_sage_flwr.transport.keys import (
    ARRAYS_KEY,
    CONFIG_KEY,
    GRAD_KEY,
    METRICS_KEY,
    NUM_BATCHES_KEY,
    PARTITION_ID_KEY,
    SERVER_ROUND_KEY,
    SMASHED_KEY,
    SPLIT_STEP_ACTION,
    STEP_KEY,
)
from fsl_sage_flwr.transport.ledger import ByteLedger
from fsl_sage_flwr.transport.log_text import client_text
from fsl_sage_flwr.transport.replies import ParsedReply
from fsl_sage_flwr.transport.splitfed_step import check_metrics, parse_smashed, reply_int
from fsl_sage_flwr.transport.uploads import SmashedUpload


@dataclass
class _Session:
    """One node's progress through a round of per-batch exchanges."""

    node_id: int
    partition_id: int = -1
    num_batches: int = -1
    num_examples: int = 0
    model: nn.Module | None = None  # SplitFed-MS: this node's server-side copy
    optimizer: torch.optim.Optimizer | None = None
    grad: np.ndarray | None = None
    pending: tuple[torch.Tensor, torch.Tensor] | None = None
    message_pairs: int = 0
    failed: bool = False


class SplitFed(SplitServer):
    """SplitFed (Thapa et al., AAAI 2022), the split-learning baselines of Nair et al., ICML 2025.

    Every local batch is a real Flower round trip: the client sends its cut-layer
    activations and labels, the server runs its part and returns the true
    cut-layer gradient, and the client backpropagates it. All sampled clients
    work in lock-step, one message pair per batch each, plus the last pair that
    returns the trained client model. Client models are averaged by FedAvg
    (:func:`~fsl_sage_flwr.strategies.averaging.weighted_average`).

    Flower's round loop carries one exchange per round, so ``configure_train``
    sends the first step (the client model and the local-training settings)
    and ``aggregate_train`` takes its replies, runs the remaining steps and the
    closing pair on the same grid, then averages.

    ``mode="ms"`` (SplitFed-MS, SFL-V1): one server-side copy per client, averaged
    each round weighted by sample counts. As in SFL-V1 a separate fed server does
    that averaging, so each copy travels up and down once per round; those bytes
    are booked on ``ledger`` when one is given. ``mode="ss"`` (SplitFed-SS,
    SFL-V2): one server-side model; at every batch step it is updated on each
    client's batch in turn, in partition-id order. The server-side copies of
    SplitFed-MS start each round with fresh Adam state.

    A step reply is checked whole before the server trains on it, as in
    :class:`~fsl_sage_flwr.strategies.upload_training.UploadTrainingServer`: integer
    metrics, the node's partition and first declared sample count, one
    non-empty batch within ``upload_limits``. A node whose reply fails a check,
    or whose server step ``server_step`` skips, leaves the round with a log line
    naming it and the reason; its server-side copy (SplitFed-MS) is not averaged.

    Parameters
    ----------
    mode : str
        ``"ms"`` or ``"ss"``.
    batch_size : int
        The clients' batch size: bounds each step's upload and a reply's ``num-batches``.
    ledger : ByteLedger, optional
        The run's byte ledger (the one its :class:`~fsl_sage_flwr.transport.ledger.MeteredGrid`
        books on), for SplitFed-MS's exchange with the fed server.
    **kwargs
        As for :class:`~fsl_sage_flwr.strategies.split_server.SplitServer`;
        ``shared_model`` is the client model.
    """

    def __init__(self, *, mode: str, batch_size: int, ledger: ByteLedger | None = None, **kwargs: Any) -> None:
        if mode not in ("ms", "ss"):
            raise ValueError(f"SplitFed mode must be 'ms' or 'ss', got {mode!r}")
        super().__init__(shared_model=kwargs["client_model"], **kwargs)
        self.mode = mode
        self.batch_size = batch_size
        self.ledger = ledger
        self.server_spec = state_dict_spec(self.server_model.state_dict())
        self._sessions: dict[int, _Session] = {}
        # Flower hands the grid to ``configure_train`` only; the later steps of the round need it.
        self._round_grid: Grid | None = None
        self._step_config: dict[str, Any] = {}

    def summary(self) -> None:
        """Log the split-learning settings and the SplitFed mode."""
        super().summary()
        variant = "one server-side copy per client (SFL-V1)" if self.mode == "ms" else "one server model (SFL-V2)"
        log(INFO, "\t└──> SplitFed-%s: %s, a message pair per batch", self.mode.upper(), variant)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Open a session per sampled node; return the first step's messages, with the client model.

        The settings come from ``training``, not from ``config``: clients train
        with exactly the values their replies are checked against.
        """
        self._sessions = {n: self._new_session(n) for n in self.select_train_nodes(server_round, grid)}
        self._round_grid = grid
        self.remember_sent(arrays)
        self._step_config = {**self.training.to_config(), SERVER_ROUND_KEY: server_round}
        return [self._step_message(s, 0, arrays) for s in self._sessions.values()]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Run the round's steps from the first replies on; average the returned client models.

        SplitFed-MS also averages the server-side copies of the nodes that
        returned their model.

        Raises
        ------
        RuntimeError
            When this is the ``max_rounds_without_replies``-th round in a row in
            which no node finished its round (see ``check_progress``).
        """
        closing = self._run_steps(list(replies))
        accepted: list[tuple[ParsedReply, RecordDict]] = []
        for msg in closing:
            try:
                accepted.append((self._parse_closing(msg), msg.content))
            except MalformedReplyError as err:
                self.log_dropped(msg.metadata.src_node_id, err)
        kept, screening = self.screen_updates([reply for reply, _ in accepted])
        kept_nodes = {reply.node_id for reply in kept}
        accepted = [item for item in accepted if item[0].node_id in kept_nodes]
        # A node finishes its round with an accepted closing reply; a round none finished trained no client.
        self.check_progress(server_round, len(accepted))
        if not accepted:
            return None, None
        accepted.sort(key=lambda item: item[0].partition_id)
        sessions = [self._sessions[reply.node_id] for reply, _ in accepted]
        contents = [content for _, content in accepted]
        for session, content in zip(sessions, contents):
            content.metric_records[METRICS_KEY]["message-pairs"] = session.message_pairs
        # Everything that can fail runs before the server state changes.
        metrics = self.train_metrics_aggr_fn(contents, WEIGHT_KEY)
        arrays = self.average_shared([reply for reply, _ in accepted], server_round)
        self.update_guard.accept(screening)
        if self.mode == "ms":
            self._average_server_copies(sessions)
            self._book_fed_server_exchange(sessions)
        return arrays, metrics

    def server_memory_bytes(self) -> int:
        """Bytes of server-side models and optimizer state (one copy per client for MS)."""
        if self.mode == "ss":
            return super().server_memory_bytes()
        copies = [s for s in self._sessions.values() if s.model is not None]
        return state_nbytes(self.server_model) + sum(
            state_nbytes(s.model) + optimizer_nbytes(s.optimizer) for s in copies
        )

    def _run_steps(self, replies: list[Message]) -> list[Message]:
        """Exchange step after step until every session closed or left; return the closing replies.

        A session's step replies are checked whole and the sessions still in
        the round ordered by partition id before any server step runs. A session
        closes with the message carrying its last gradient; all closing
        messages go out together once the last session finished its batches.
        """
        grid = self._round_grid
        active = list(self._sessions.values())
        closing: list[Message] = []
        step = 0
        while active:
            by_node = {m.metadata.src_node_id: m for m in replies}
            for session in active:
                session.message_pairs += 1
                self._handle_step_reply(session, by_node.get(session.node_id), step)
            ordered = self._checked_sessions(active, step)
            # Every check of this step's replies passed: the server state may change.
            self.activation_scale.accept([s.pending for s in ordered])
            for session in ordered:
                self._server_step(session)
            step += 1
            active = []
            for session in ordered:
                if session.failed:
                    continue
                if step == session.num_batches:  # its last gradient goes with the closing message
                    closing.append(self._step_message(session, step, None))
                    session.message_pairs += 1
                else:
                    active.append(session)
            if active:
                messages = [self._step_message(s, step, None) for s in active]
                replies = list(grid.send_and_receive(messages, timeout=self.round_timeout))
        log(INFO, "splitfed-%s: %d batches exchanged per client at most", self.mode, step)
        if not closing:
            return []
        return list(grid.send_and_receive(closing, timeout=self.round_timeout))

    # ----------------------------------------------------------------- helpers
    def _read_header(self, content: RecordDict) -> tuple[int, int, int]:
        """``(partition-id, num-batches, num-examples)`` of a step or closing reply, range-checked.

        The one parser of a SplitFed reply's header: integer metrics only, a
        sample count within ``max_examples`` and no more batches than
        ``local_epochs`` passes over that many samples take.
        """
        check_metrics(content)
        partition_id = reply_int(content, PARTITION_ID_KEY)
        num_batches = reply_int(content, NUM_BATCHES_KEY)
        num_examples = reply_int(content, WEIGHT_KEY)
        if not 1 <= num_examples <= self.bounds.max_examples:
            raise MalformedReplyError(f"num-examples {num_examples} out of range")
        most = self.training.local_epochs * math.ceil(num_examples / self.batch_size)
        if not 1 <= num_batches <= most:
            raise MalformedReplyError(f"num-batches {num_batches} outside [1, {most}]")
        return partition_id, num_batches, num_examples

    def _parse_closing(self, msg: Message) -> ParsedReply:
        session = self._sessions.get(msg.metadata.src_node_id)
        if session is None or session.failed:
            raise MalformedReplyError("closing reply from a node outside this round")
        if msg.has_error():
            raise MalformedReplyError(f"error reply: {client_text(msg.error.reason)}")
        if set(msg.content.array_records) != {ARRAYS_KEY}:
            raise MalformedReplyError("closing reply must carry exactly the client model arrays")
        if self._read_header(msg.content) != (session.partition_id, session.num_batches, session.num_examples):
            raise MalformedReplyError("partition-id, num-batches or num-examples changed within the round")
        arrays = msg.content.array_records[ARRAYS_KEY]
        check_model_record(arrays, self.shared_spec)
        return ParsedReply(session.node_id, session.partition_id, session.num_examples, arrays, SmashedUpload([]))

    def _new_session(self, node_id: int) -> _Session:
        session = _Session(node_id)
        if self.mode == "ms":
            session.model = copy.deepcopy(self.server_model)
            session.optimizer = make_adam(session.model, self.training.lr, self.training.weight_decay)
        return session

    def _step_message(self, session: _Session, step: int, arrays: ArrayRecord | None) -> Message:
        """A step request: the config, the client model at step 0, the gradient of the last batch after it."""
        content = RecordDict({CONFIG_KEY: ConfigRecord({**self._step_config, STEP_KEY: step})})
        if arrays is not None:
            content[ARRAYS_KEY] = arrays
        if session.grad is not None:
            content[GRAD_KEY] = ArrayRecord({"grad": to_array(session.grad)})
            session.grad = None
        return Message(
            content=content, dst_node_id=session.node_id, message_type=f"{MessageType.TRAIN}.{SPLIT_STEP_ACTION}"
        )

    def _handle_step_reply(self, session: _Session, msg: Message | None, step: int) -> None:
        """Check one step reply whole; keep its batch as pending, or fail the session. Trains nothing."""
        try:
            if msg is None or msg.has_error():
                raise MalformedReplyError(client_text(msg.error.reason) if msg is not None else "no reply")
            content = msg.content
            header = self._read_header(content)
            if step == 0:
                partition_id, _, num_examples = header
                self.identities.check(session.node_id, partition_id, num_examples)
            elif header != (session.partition_id, session.num_batches, session.num_examples):
                raise MalformedReplyError("partition-id, num-batches or num-examples changed within the round")
            if set(content.array_records) != {SMASHED_KEY}:
                raise MalformedReplyError("a step reply carries exactly the smashed activations")
            upload = parse_smashed(
                content.array_records[SMASHED_KEY],
                cut_shape=self.cut_shape,
                labels=self.objective.labels,
                max_samples=self.batch_size,
                max_batch=self.batch_size,
            )
            if not upload.batches:
                raise MalformedReplyError("uploads no activations")
            if len(upload.batches) != 1:
                raise MalformedReplyError("a step reply carries exactly one batch")
            self.activation_scale.check(upload.batches)
        except MalformedReplyError as err:
            self._leave(session, err)
            return
        session.partition_id, session.num_batches, session.num_examples = header
        session.pending = upload.batches[0]

    def _checked_sessions(self, active: list[_Session], step: int) -> list[_Session]:
        """The sessions still in the round, in partition-id order; at step 0 register their identities.

        Two new nodes claiming one partition at step 0 both leave the round, whatever their node ids.
        """
        claimants: dict[int, list[_Session]] = {}
        for session in sorted((s for s in active if not s.failed), key=lambda s: (s.partition_id, s.node_id)):
            claimants.setdefault(session.partition_id, []).append(session)
        ordered: list[_Session] = []
        for partition_id, sessions in claimants.items():
            if len(sessions) == 1:
                ordered.append(sessions[0])
                continue
            nodes = " and ".join(str(s.node_id) for s in sessions)
            for session in sessions:
                self._leave(session, f"partition-id {partition_id} is claimed by nodes {nodes}")
        if step == 0:
            for session in ordered:
                self.identities.register(session.node_id, session.partition_id, session.num_examples)
        return ordered

    def _leave(self, session: _Session, reason: Exception | str) -> None:
        """Drop a node from the round, with a log line naming it and the reason."""
        self.log_dropped(session.node_id, f"leaves the round: {reason}")
        session.failed = True

    def _server_step(self, session: _Session) -> None:
        z, y = (t.to(self.device) for t in session.pending)
        model = session.model if self.mode == "ms" else self.server_model
        optimizer = session.optimizer if self.mode == "ms" else self.server_optimizer
        z = z.clone().requires_grad_(True)
        try:
            with autocast(self.device, self.training.autocast):
                server_step(model, optimizer, z, y, self.objective.loss)
        except UnsafeStepError as err:
            self._leave(session, f"server step skipped: {err}")
            return
        session.grad = z.grad.cpu().numpy().astype(np.float32)

    def _book_fed_server_exchange(self, sessions: list[_Session]) -> None:
        """Book each server-side copy going to the fed server and back (SFL-V1)."""
        if self.ledger is None:
            return
        nbytes = state_nbytes(self.server_model)
        for session in sessions:
            self.ledger.add_up(session.node_id, nbytes)
            self.ledger.add_down(session.node_id, nbytes)

    def _average_server_copies(self, sessions: list[_Session]) -> None:
        """Average the server-side copies, weighted by sample counts, as the fed server of SFL-V1 does.

        The copies are averaged in double precision and rounded back once (the
        client models follow Flower's FedAvg in their own precision).
        """
        copies = [(_double_precision(s.model), s.num_examples) for s in sessions]
        averaged = weighted_average(copies, self.server_spec)
        self.server_model.load_state_dict(averaged.to_torch_state_dict())


def _double_precision(module: nn.Module) -> ArrayRecord:
    """A module's state with floating-point tensors in float64, on the CPU."""
    return ArrayRecord(
        array_dict={
            name: to_array((t.double() if t.is_floating_point() else t).detach().cpu().numpy())
            for name, t in module.state_dict().items()
        }
    )
