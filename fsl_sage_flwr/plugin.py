"""The public way into fsl-sage-flwr: describe a split once, get any algorithm's strategy and client."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
from flwr.app import Context
from flwr.clientapp import ClientApp
from flwr.serverapp.strategy import Strategy
from torch import nn

from fsl_sage_flwr.client_replies import numpy_client_reply, register_client, register_split_client
from fsl_sage_flwr.clients.setup_checks import check_node_data, node_partition_id
from fsl_sage_flwr.core.losses import LossFn, Metric, Objective, SplitLoss, split_objective
from fsl_sage_flwr.core.models import SplitModel
from fsl_sage_flwr.core.setup_checks import SetupError, check_input_shape, check_split_shapes
from fsl_sage_flwr.core.training import derive_seed
from fsl_sage_flwr.data import ArrayDataset
from fsl_sage_flwr.data.user_data import DataLike, as_dataset
from fsl_sage_flwr.split_algorithms import SplitClient, check_algorithm, node_parts, split_client, split_strategy
from fsl_sage_flwr.strategies.fsl_sage import AlignmentSettings, FSLSage
from fsl_sage_flwr.strategies.legacy import FSLSageLegacy
from fsl_sage_flwr.transport.local_training import LocalTraining

__all__ = ["DataLike", "SplitSpec", "as_dataset", "numpy_client_reply", "register_client"]

#: A model, or a function building a fresh one.
ModelSource = nn.Module | Callable[[], nn.Module]


@dataclass
class SplitSpec:
    """One split network, described once, for FSL-SAGE (Nair et al., ICML 2025) and its baselines.

    The server and every client build their parts from it: :meth:`strategy`,
    :meth:`legacy_strategy`, :meth:`client` and :meth:`register`. Each takes an
    ``algorithm``: ``"fsl-sage"`` (the default), ``"cse-fsl"``, ``"splitfed-ms"``,
    ``"splitfed-ss"`` or ``"fedavg"`` (Flower's FedAvg on client and server joined).

    Parameters
    ----------
    client_model : nn.Module or Callable[[], nn.Module]
        The client-side layers: inputs to cut-layer activations.
    server_model : nn.Module or Callable[[], nn.Module]
        The server-side layers: cut-layer activations to class logits.
    aux_model : Callable[[], nn.Module]
        Builds a fresh auxiliary model: cut-layer activations to class logits. The
        server keeps one per client and aligns it; its input gradient is the
        client's estimate of the server's cut-layer gradient.
    cut_shape : tuple[int, ...]
        Shape of one sample's cut-layer activation (no batch dimension).
    num_classes : int or None
        Number of classes: integer labels lie in ``[0, num_classes)``. ``None``
        for float labels.
    testset : DataLike, optional
        Held-out data the server evaluates on after every round.
    input_shape : tuple[int, ...], optional
        Shape of one input sample (no batch dimension); taken from ``testset``
        when not given. With it, the split checks itself when made: a 2-sample
        batch runs client -> server and client -> aux, and a part that cannot
        take its input is named with the shapes involved (ValueError).
    loss : SplitLoss or Callable, optional
        The server's loss, ``loss(outputs, labels) -> scalar`` batch mean (a
        :class:`~fsl_sage_flwr.core.losses.SplitLoss` may add its summed form);
        the auxiliary models map the cut to what it takes, and the clients'
        gradient estimates and the alignment use it too. Default: cross-entropy
        over classes (``(N, num_classes)`` logits).
    label_shape : tuple[int, ...]
        One sample's label shape: ``()`` (a class, the default), ``(T,)`` per
        token, ``(K,)`` multi-label or regression targets.
    label_dtype : str
        ``"int64"`` (class indices, bounded by ``num_classes``) or ``"float32"``
        (finite values).
    metric : Metric, optional
        Reported after every round next to ``loss``; default accuracy for one
        class label per sample, none otherwise (see ``fsl_sage_flwr.core.losses``:
        ``ACCURACY``, ``perplexity``).

    Examples
    --------
    >>> spec = SplitSpec(client_model=lambda: nn.Linear(64, 32), server_model=lambda: nn.Linear(32, 10),
    ...                  aux_model=lambda: nn.Linear(32, 10), cut_shape=(32,), num_classes=10,
    ...                  input_shape=(64,))
    """

    client_model: ModelSource
    server_model: ModelSource
    aux_model: Callable[[], nn.Module]
    cut_shape: tuple[int, ...]
    num_classes: int | None
    testset: DataLike | None = None
    input_shape: tuple[int, ...] | None = None
    loss: SplitLoss | LossFn | None = None
    label_shape: tuple[int, ...] = ()
    label_dtype: str = "int64"
    metric: Metric | None = None
    _testset: ArrayDataset | None = field(init=False, repr=False, default=None)
    objective: Objective = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.cut_shape = tuple(int(d) for d in self.cut_shape)
        if not self.cut_shape or min(self.cut_shape) < 1:
            raise ValueError(f"cut_shape must be positive sizes, got {self.cut_shape}")
        if self.num_classes is not None and int(self.num_classes) < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        self.label_shape = tuple(int(d) for d in self.label_shape)
        self.objective = split_objective(self.num_classes, self.loss, self.label_shape, self.label_dtype, self.metric)
        if isinstance(self.aux_model, nn.Module) or not callable(self.aux_model):
            raise ValueError(
                "aux_model must be a function returning a fresh nn.Module (the server keeps one per client)"
            )
        self._testset = self._checked_testset()
        if self.input_shape is not None:
            self.input_shape = tuple(int(d) for d in self.input_shape)
            if not self.input_shape or min(self.input_shape) < 1:
                raise ValueError(f"input_shape must be positive sizes, got {self.input_shape}")
            if self._testset is not None:
                _as_value_error(check_input_shape, self._testset.images.shape[1:], self.input_shape, "testset inputs")
        elif self._testset is not None:
            self.input_shape = tuple(self._testset.images.shape[1:])
        if self.input_shape is not None:
            self.check(np.zeros((2, *self.input_shape), dtype=np.float32))

    def build(self) -> SplitModel:
        """Return fresh (or copied) client, server and auxiliary models."""
        return SplitModel(
            client=_fresh(self.client_model, "client_model"),
            server=_fresh(self.server_model, "server_model"),
            aux=_fresh(self.aux_model, "aux_model"),
            cut_shape=self.cut_shape,
            objective=self.objective,
        )

    def check(self, sample_inputs: np.ndarray) -> None:
        """Run two samples client -> server and client -> aux; raise ValueError naming a part that does not fit."""
        with torch.random.fork_rng(devices=[]):  # a check leaves the caller's RNG as it was
            split = self.build()
        heads = (("server_model", split.server), ("aux_model", split.aux))
        sample_shape = np.asarray(sample_inputs).shape[1:]
        _as_value_error(
            check_split_shapes, split.client, heads, sample_shape, self.cut_shape, self.num_classes, self.objective
        )

    def strategy(
        self,
        *,
        algorithm: str = "fsl-sage",
        training: LocalTraining | None = None,
        alignment: AlignmentSettings | None = None,
        **kwargs: Any,
    ) -> Strategy:
        """Build ``algorithm``'s strategy for Flower's Message API (``ServerApp`` ``@app.main``).

        Run it with ``strategy.start(grid, strategy.initial_arrays(), num_rounds,
        evaluate_fn=strategy.evaluate_global)``.

        Parameters
        ----------
        algorithm : str
            ``"fsl-sage"``, ``"cse-fsl"``, ``"splitfed-ms"``, ``"splitfed-ss"`` or ``"fedavg"``.
        training : LocalTraining, optional
            What every client trains with (sent to them each round).
        alignment : AlignmentSettings, optional
            FSL-SAGE's auxiliary alignment schedule and optimizer (the app's defaults, as in ``pyproject.toml``).
        **kwargs
            Passed to the strategy (see :func:`fsl_sage_flwr.split_algorithms.split_strategy`):
            ``fraction_train``, ``min_train_nodes``, ``min_available_nodes``, ``device``, ...
        """
        training = training or LocalTraining()
        # The initial models follow the seed, without disturbing the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(training.seed, "split-init"))
            split = self.build()
        return split_strategy(
            algorithm,
            split,
            num_classes=self.num_classes,
            training=training,
            testset=self._testset,
            alignment=alignment,
            aux_factory=lambda: _fresh(self.aux_model, "aux_model"),
            **kwargs,
        )

    def legacy_strategy(self, **kwargs: Any) -> FSLSageLegacy:
        """Build FSL-SAGE for Flower's legacy ``ServerApp(server_fn=...)``; as :meth:`strategy`.

        Raises
        ------
        ValueError
            For another ``algorithm``: the baselines are served through the Message API.
        """
        algorithm = kwargs.pop("algorithm", "fsl-sage")
        if algorithm != "fsl-sage":
            raise ValueError(f"the legacy API serves FSL-SAGE only; build {algorithm!r} with strategy()")
        return FSLSageLegacy(cast(FSLSage, self.strategy(**kwargs)))

    def client(
        self,
        trainset: DataLike,
        context: Context,
        *,
        algorithm: str = "fsl-sage",
        partition_id: int | None = None,
        device: torch.device | str = "cpu",
    ) -> SplitClient:
        """Build this node's client of ``algorithm``.

        FSL-SAGE, CSE-FSL and FedAvg clients are NumPyClients; SplitFed's answers
        per-batch messages, so serve it with :meth:`register`.

        Parameters
        ----------
        trainset : DataLike
            This node's training data.
        context : Context
            Flower's context of this node; its ``state`` keeps the aux between rounds.
        algorithm : str
            As in :meth:`strategy`.
        partition_id : int, optional
            The node's stable id; defaults to ``context.node_config["partition-id"]``.
        device : torch.device or str
            Where the client trains, e.g. ``"cuda"``.

        Raises
        ------
        SetupError
            (a ValueError) In one line naming the cause, which the node's error
            reply carries to the server: no partition id, labels outside
            ``[0, num_classes)`` (or not finite), or inputs the client model cannot take.
        """
        if partition_id is None:
            partition_id = node_partition_id(context.node_config)
        data = as_dataset(trainset, self.objective.labels)
        split = node_parts(algorithm, self.build())
        check_node_data(split, data, self.num_classes, self.input_shape)
        return split_client(algorithm, split, data, partition_id, context.state, device)

    def register(
        self, app: ClientApp, trainset_fn: Callable[[Context], DataLike], *, algorithm: str = "fsl-sage"
    ) -> None:
        """Serve this split's client of ``algorithm`` from ``app`` (Flower's Message API).

        Parameters
        ----------
        app : ClientApp
            A ClientApp built without ``client_fn``.
        trainset_fn : Callable[[Context], DataLike]
            Returns this node's training data.
        algorithm : str
            As in :meth:`strategy`.
        """
        check_algorithm(algorithm)
        register_split_client(app, lambda context: self.client(trainset_fn(context), context, algorithm=algorithm))

    def _checked_testset(self) -> ArrayDataset | None:
        """The testset as an ArrayDataset whose labels fit the split (ValueError otherwise)."""
        if self.testset is None:
            return None
        data = as_dataset(self.testset, self.objective.labels)
        problem = self.objective.labels.problem(data.labels)
        if problem is not None:
            raise ValueError(f"testset: {problem}")
        return data


def _as_value_error(check: Callable[..., None], *args: Any) -> None:
    """Run a setup check for the spec itself: its fault is a plain ValueError naming the part."""
    try:
        check(*args)
    except SetupError as err:
        raise ValueError(err.detail) from err.__cause__


def _fresh(source: ModelSource, name: str) -> nn.Module:
    module = copy.deepcopy(source) if isinstance(source, nn.Module) else source()
    if not isinstance(module, nn.Module):
        raise ValueError(f"{name} must be an nn.Module or return one, got {type(module).__name__}")
    return module
