"""The server every split strategy builds on: one server model, the client side's spec, the guards."""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO, WARNING

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result
from flwr.serverapp.strategy.strategy_utils import sample_nodes
from torch import nn

from fsl_sage_flwr.core.losses import Objective, classification, evaluate_model
from fsl_sage_flwr.core.memory import optimizer_nbytes, state_nbytes
from fsl_sage_flwr.core.settings import require_argument
from fsl_sage_flwr.core.training import make_adam
from fsl_sage_flwr.data import ArrayDataset
from fsl_sage_flwr.strategies.averaging import WEIGHT_KEY
from fsl_sage_flwr.strategies.model_privacy import ModelPrivacy
from fsl_sage_flwr.strategies.node_wait import wait_for_nodes
from fsl_sage_flwr.strategies.robust_average import AGGREGATIONS, aggregate
from fsl_sage_flwr.strategies.setup_drops import DropRecord
from fsl_sage_flwr.strategies.split_keywords import check_split_keywords
from fsl_sage_flwr.strategies.update_screening import screen_updates
from fsl_sage_flwr.transport.arrays import state_dict_spec
from fsl_sage_flwr.transport.drop_reasons import setup_kind
from fsl_sage_flwr.transport.guard import ActivationScale, IdentityRegistry, UploadLimits
from fsl_sage_flwr.transport.local_training import LocalTraining
from fsl_sage_flwr.transport.log_text import client_text
from fsl_sage_flwr.transport.metrics import TrainMetricsTap
from fsl_sage_flwr.transport.replies import ParsedReply, ReplyBounds
from fsl_sage_flwr.transport.update_guard import Screening, UpdateGuard, UpdateLimits


class SplitServer(FedAvg):
    """What every split strategy's server holds: one server model, the client side's spec, the guards.

    The common base of :class:`~fsl_sage_flwr.strategies.upload_training.UploadTrainingServer`
    (FSL-SAGE, CSE-FSL) and the SplitFed baselines (Nair et al., ICML 2025,
    Sec. 5): the server-side model and its optimizer, the bounds a reply is
    checked against, the registry of node identities, the running activation
    scale, node sampling, server-side evaluation, checkpoint state and the one
    weighted average of client-side arrays
    (:func:`~fsl_sage_flwr.strategies.averaging.weighted_average`). How a round
    exchanges messages is the subclass's.

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
    num_classes : int or None
        Number of classes (bounds integer labels); ``None`` with float labels.
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
    update_limits : UpdateLimits, optional
        Bounds on each reply's client-model update (default ``UpdateLimits()``:
        10 times the round's median update norm; see
        :class:`~fsl_sage_flwr.transport.update_guard.UpdateGuard`).
    aggregation : str
        How client-side arrays are averaged: ``"mean"`` (weighted by sample
        counts), ``"trimmed-mean"`` or ``"median"`` (see
        :func:`~fsl_sage_flwr.strategies.robust_average.aggregate`).
    model_privacy : ModelPrivacy, optional
        Client-level differential privacy of that average (clipped updates, equal
        weights, Gaussian noise; replaces ``aggregation``); off by default.
    max_rounds_without_replies : int
        Stop the run with an error after this many consecutive rounds in which
        no reply was accepted (it names the first reasons replies were dropped).
    node_wait_timeout : float
        Seconds to wait for ``min_available_nodes`` nodes before the run fails.
    allow_partial_federation : bool
        By default (``False``) a node dropped for its setup (shapes, labels,
        partition id) fails the run in that round, and a node that never
        contributed fails it at the end, each named with its reason (see
        :class:`~fsl_sage_flwr.strategies.setup_drops.DropRecord`); ``True`` runs
        on without them and logs the summary.
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
        num_classes: int | None,
        training: LocalTraining,
        testset: ArrayDataset | None = None,
        objective: Objective | None = None,
        max_examples: int = 1_000_000,
        upload_limits: UploadLimits | None = None,
        update_limits: UpdateLimits | None = None,
        aggregation: str = "mean",
        model_privacy: ModelPrivacy | None = None,
        max_rounds_without_replies: int = 3,
        node_wait_timeout: float = 600.0,
        allow_partial_federation: bool = False,
        device: torch.device | str = "cpu",
        fraction_train: float = 1.0,
        min_train_nodes: int = 2,
        min_available_nodes: int = 2,
        train_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
    ) -> None:
        check_split_keywords(
            num_classes=num_classes,
            max_examples=max_examples,
            max_rounds_without_replies=max_rounds_without_replies,
            node_wait_timeout=node_wait_timeout,
            fraction_train=fraction_train,
            min_train_nodes=min_train_nodes,
            min_available_nodes=min_available_nodes,
        )
        require_argument(aggregation in AGGREGATIONS, "aggregation", aggregation, f"one of {AGGREGATIONS}")
        if not isinstance(training, LocalTraining):
            raise TypeError(f"'training' must be a LocalTraining, got {type(training).__name__}")
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
        self.objective = objective if objective is not None else classification(num_classes)
        require_argument(
            num_classes in (None, self.objective.num_classes),
            "num_classes",
            num_classes,
            f"the objective's ({self.objective.num_classes})",
        )
        self.num_classes = self.objective.num_classes
        self.training = training
        self.testset = testset
        self._test_tensors: tuple[torch.Tensor, torch.Tensor] | None = None
        self.server_optimizer = make_adam(server_model, training.lr, training.weight_decay)
        self.shared_spec = state_dict_spec(shared_model.state_dict())
        self.bounds = ReplyBounds(self.cut_shape, self.num_classes, training, max_examples, self.objective.labels)
        self.activation_scale = ActivationScale(upload_limits or UploadLimits())
        self.identities = IdentityRegistry(max_partitions=max_examples)
        self.update_guard = UpdateGuard(update_limits or UpdateLimits())
        self.aggregation = aggregation
        self.model_privacy = model_privacy
        self._sent_arrays: ArrayRecord | None = None  # the global arrays of this round's requests
        self.max_rounds_without_replies = max_rounds_without_replies
        self.node_wait_timeout = node_wait_timeout
        self.round_timeout = 3600.0  # set by ``prepare_run``
        self.num_rounds: int | None = None  # set by ``prepare_run``
        self._rounds_without_replies = 0
        self._drop_reasons: list[str] = []
        self.drops = DropRecord(allow_partial_federation)

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
        result = super().start(
            grid,
            initial_arrays,
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config,
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
        )
        self.finish_run()
        return result

    def prepare_run(self, num_rounds: int, timeout: float = 3600) -> None:
        """Remember the run's length and the timeout of every exchange.

        ``start`` calls it, and so does :func:`fsl_sage_flwr.app.rounds.run_rounds`.
        """
        self.round_timeout = float(timeout)
        self.num_rounds = num_rounds

    def finish_run(self) -> None:
        """Log every dropped node with its reason; fail unless each contributed (or partial runs are allowed).

        ``start`` calls it, and so does :func:`fsl_sage_flwr.app.rounds.run_rounds`.
        """
        self.drops.finish(lambda node_id: self.identities.get(node_id) is not None)

    def initial_arrays(self) -> ArrayRecord:
        """The shared model's current state: pass it as ``start(initial_arrays=...)``."""
        return ArrayRecord(self.shared_model.state_dict())

    def summary(self) -> None:
        """Log the sampling settings (as FedAvg does) and the split-learning ones."""
        super().summary()
        training = self.training
        log(INFO, "\t├──> Split learning:")
        labels = self.objective.labels
        log(INFO, "\t│\t├──Cut-layer shape: %s | labels: %s %s", self.cut_shape, labels.shape, labels.dtype)
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

    def check_setup(self, server_round: int | None = None) -> None:
        """Fail the run on the nodes dropped for their setup since the last check (see ``DropRecord``).

        Without ``server_round`` (an exchange within a round, such as the warm-up)
        the drops are the current round's; with it, that round ends and the drops
        that follow belong to the next.
        """
        self.drops.check_round(self.drops.current_round if server_round is None else server_round)
        if server_round is not None:
            self.drops.start_round(server_round + 1)

    def check_progress(self, server_round: int, num_accepted: int) -> None:
        """Fail on setup drops; count rounds without an accepted reply, failing the run after too many in a row."""
        self.check_setup(server_round)
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
        model = nn.Sequential(self.client_model, self.server_model)
        return MetricRecord(evaluate_model(model, *self._test_tensors, self.objective.loss, self.objective.metric))

    def server_memory_bytes(self) -> int:
        """Bytes of the tensors the server keeps: model, optimizer state."""
        return state_nbytes(self.server_model) + optimizer_nbytes(self.server_optimizer)

    def state_dict(self) -> dict:
        """What a checkpoint holds of the server: model, optimizer, the run of rounds without replies, the guards.

        The guards are ``"activation_scale"``, ``"identities"`` and ``"update_guard"`` (their ``state_dict()``),
        so that a resumed run refuses the replies the uninterrupted one would.
        """
        return {
            "server_model": self.server_model.state_dict(),
            "server_optimizer": self.server_optimizer.state_dict(),
            "rounds_without_replies": self._rounds_without_replies,
            "drop_reasons": list(self._drop_reasons),
            "activation_scale": self.activation_scale.state_dict(),
            "identities": self.identities.state_dict(),
            "update_guard": self.update_guard.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned.

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
        missing = [key for key in ("activation_scale", "identities", "update_guard") if key not in state]
        if missing:
            raise ValueError(f"server state without {missing}: an older checkpoint, which cannot be resumed")
        self.activation_scale.load_state_dict(state["activation_scale"])
        self.identities.load_state_dict(state["identities"])
        self.update_guard.load_state_dict(state["update_guard"])
        self.server_model.load_state_dict(state["server_model"])
        self.server_optimizer.load_state_dict(state["server_optimizer"])
        self._rounds_without_replies = int(state["rounds_without_replies"])
        self._drop_reasons = list(state["drop_reasons"])

    def checkpoint_saved(self) -> None:
        """Hook run once a checkpoint holding :meth:`state_dict` is on disk."""

    def log_dropped(self, node_id: int, err: Exception | str) -> None:
        """Log one line naming the node of a dropped reply and the reason; keep the reason."""
        # The reason may quote the client (an error reply's text): one bounded line, always.
        text = client_text(err, limit=400)
        reason = f"node {node_id}{self.describe_node(node_id)}: {text}"
        log(WARNING, "dropped reply from %s", reason)
        if len(self._drop_reasons) < 10:
            self._drop_reasons.append(reason)
        self.drops.add(node_id, self.describe_node(node_id), text, setup_kind(err))

    def describe_node(self, node_id: int) -> str:
        """Name the node's registered partition in log lines."""
        identity = self.identities.get(node_id)
        return f" (partition {identity.partition_id})" if identity else ""

    def average_shared(self, accepted: list[ParsedReply], server_round: int) -> ArrayRecord:
        """The accepted replies' arrays averaged as ``aggregation`` or ``model_privacy`` says."""
        states = [(r.arrays, r.num_examples) for r in accepted]
        if self.model_privacy is not None:
            sent = self._sent_arrays or ArrayRecord(self.shared_model.state_dict())
            return self.model_privacy.average(sent, states, self.shared_spec, server_round)
        return aggregate(states, self.shared_spec, self.aggregation)

    def remember_sent(self, arrays: ArrayRecord) -> ArrayRecord:
        """Keep (and return) the global arrays sent this round: updates are measured from them."""
        self._sent_arrays = arrays
        return arrays

    def screen_updates(self, replies: list[ParsedReply]) -> tuple[list[ParsedReply], Screening]:
        """Drop, with a log line each, the replies whose client-model update is out of bounds.

        Nothing changes but the log; ``self.update_guard.accept`` folds the
        round in once it is accepted. Before any request was sent, the shared
        model's state stands for the global arrays.
        """
        sent = self._sent_arrays or ArrayRecord(self.shared_model.state_dict())
        return screen_updates(self.update_guard, sent, replies, self.log_dropped)
