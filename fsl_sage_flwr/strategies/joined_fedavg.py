"""Flower's own FedAvg on a split network joined back together, evaluated by the server as the split strategies are."""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result
from torch import nn

from fsl_sage_flwr.core.losses import ACCURACY, CROSS_ENTROPY, Objective, evaluate_model
from fsl_sage_flwr.core.memory import state_nbytes
from fsl_sage_flwr.data import ArrayDataset
from fsl_sage_flwr.strategies.checked_fedavg import CheckedFedAvg
from fsl_sage_flwr.strategies.model_privacy import ModelPrivacy
from fsl_sage_flwr.transport.local_training import LocalTraining
from fsl_sage_flwr.transport.update_guard import UpdateLimits


class JoinedFedAvg(CheckedFedAvg):
    """Flower's FedAvg, unchanged, training ``full_model``: client and server parts as one network.

    Every round is Flower's: sampling, requests, weighted averaging; as
    :class:`~fsl_sage_flwr.strategies.checked_fedavg.CheckedFedAvg` it fails a run
    whose nodes are set up wrong. This class only adds what the split strategies offer too, so one ServerApp serves them
    all: :meth:`initial_arrays`, :meth:`evaluate_global` (pass it as
    ``start(evaluate_fn=...)``), :meth:`server_memory_bytes`, and ``start``
    sending ``training`` as the train config unless given another.

    Parameters
    ----------
    full_model : nn.Module
        The joined network, e.g. ``nn.Sequential(client, server)``.
    training : LocalTraining, optional
        What every node trains with; sent as the train config.
    testset : ArrayDataset, optional
        Held-out data :meth:`evaluate_global` scores the averaged model on.
    objective : Objective, optional
        The loss and metric it is scored with; ``None``: cross-entropy and accuracy.
    device : torch.device or str
        Where the evaluation runs.
    fraction_train, min_train_nodes, min_available_nodes, train_metrics_aggr_fn
        As Flower's FedAvg; federated evaluation stays off (no node evaluates).
    allow_partial_federation : bool
        Run on without nodes dropped for their setup (see ``CheckedFedAvg``).
    update_limits, aggregation, model_privacy
        Bounds on each reply's update, the average and its differential privacy
        (see ``GuardedFedAvg``).
    """

    def __init__(
        self,
        *,
        full_model: nn.Module,
        training: LocalTraining | None = None,
        testset: ArrayDataset | None = None,
        objective: Objective | None = None,
        device: torch.device | str = "cpu",
        fraction_train: float = 1.0,
        min_train_nodes: int = 2,
        min_available_nodes: int = 2,
        train_metrics_aggr_fn: Callable[[list[RecordDict], str], MetricRecord] | None = None,
        allow_partial_federation: bool = False,
        update_limits: UpdateLimits | None = None,
        aggregation: str = "mean",
        model_privacy: ModelPrivacy | None = None,
    ) -> None:
        super().__init__(
            allow_partial_federation=allow_partial_federation,
            update_limits=update_limits,
            aggregation=aggregation,
            model_privacy=model_privacy,
            fraction_train=fraction_train,
            fraction_evaluate=0.0,
            min_train_nodes=min_train_nodes,
            min_evaluate_nodes=0,
            min_available_nodes=min_available_nodes,
            train_metrics_aggr_fn=train_metrics_aggr_fn,
        )
        self.device = torch.device(device)
        self.full_model = full_model.to(self.device)
        self.training = training or LocalTraining()
        self.testset = testset
        self.objective = objective
        self._test_tensors: tuple[torch.Tensor, torch.Tensor] | None = None

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
        """Flower's round loop (see FedAvg.start); the train config defaults to ``training``'s settings."""
        return super().start(
            grid,
            initial_arrays,
            num_rounds=num_rounds,
            timeout=timeout,
            train_config=train_config if train_config is not None else ConfigRecord(self.training.to_config()),
            evaluate_config=evaluate_config,
            evaluate_fn=evaluate_fn,
        )

    def initial_arrays(self) -> ArrayRecord:
        """The joined model's current state: pass it as ``start(initial_arrays=...)``."""
        return ArrayRecord(self.full_model.state_dict())

    def evaluate_global(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Score the averaged joined model on the test set; ``None`` without one."""
        if self.testset is None:
            return None
        self.full_model.load_state_dict(arrays.to_torch_state_dict())
        if self._test_tensors is None:
            x, y = torch.from_numpy(self.testset.images), torch.from_numpy(self.testset.labels)
            self._test_tensors = (x.to(self.device), y.to(self.device))
        loss, metric = (self.objective.loss, self.objective.metric) if self.objective else (CROSS_ENTROPY, ACCURACY)
        return MetricRecord(evaluate_model(self.full_model, *self._test_tensors, loss, metric))

    def server_memory_bytes(self) -> int:
        """Bytes of the joined model the server keeps."""
        return state_nbytes(self.full_model)
