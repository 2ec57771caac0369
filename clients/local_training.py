"""The local round every NumPyClient here shares: seed, optimizer, epochs, uploads, memory."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import RecordDict
from flwr.client import NumPyClient
from torch import nn

from clients.common import load_numpy, load_optimizer_state, pack_uploads, save_optimizer_state, state_to_numpy
from fsl_sage_flwr.data import ArrayDataset
from fsl_sage_flwr.memory import PeakMemoryMeter
from fsl_sage_flwr.models import SplitModel
from fsl_sage_flwr.training import derive_seed, make_adam, run_local_epochs

OPTIMIZER_STATE_KEY = "client-optimizer"


class LocalTrainingClient(NumPyClient):
    """A NumPyClient that runs E local epochs and, for split methods, keeps ``(z, y)``.

    Subclasses say which module travels (``shared_model``), which one the
    optimizer trains (``trained_model``), which models the client holds
    (``held_models``, for the memory meter), and what one step is (``step``).
    Seeds derive from (seed, round, partition), so runs repeat exactly.

    Parameters
    ----------
    split : SplitModel
        Freshly built models.
    trainset : ArrayDataset
        This client's partition.
    partition_id : int
        Reported to the server, which orders replies by it.
    state : RecordDict
        Flower's per-node ``Context.state``.
    """

    uploads_smashed = True

    def __init__(self, split: SplitModel, trainset: ArrayDataset, partition_id: int, state: RecordDict) -> None:
        self.split = split
        self.x = torch.from_numpy(trainset.images)
        self.y = torch.from_numpy(trainset.labels)
        self.partition_id = partition_id
        self.state = state

    @property
    def shared_model(self) -> nn.Module:
        """The module whose state travels in the ``arrays`` record."""
        raise NotImplementedError

    @property
    def trained_model(self) -> nn.Module:
        """The module the local optimizer updates."""
        return self.shared_model

    @property
    def held_models(self) -> list[nn.Module]:
        """Every model the client keeps in memory while it trains."""
        return [self.shared_model]

    def step(
        self, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, meter: PeakMemoryMeter
    ) -> torch.Tensor:
        """Run one local step; return the (detached) cut-layer activations."""
        raise NotImplementedError

    def load_parameters(self, parameters: list[np.ndarray], config: dict[str, Any]) -> None:
        """Load the request's flat array list."""
        load_numpy(self.shared_model, parameters)

    def prepare_optimizer(self, optimizer: torch.optim.Optimizer, config: dict[str, Any]) -> None:
        """Restore the optimizer's state when ``keep-optimizer-state`` is set."""
        if config.get("keep-optimizer-state", False):
            load_optimizer_state(optimizer, self.state, OPTIMIZER_STATE_KEY)

    def finish_optimizer(self, optimizer: torch.optim.Optimizer, config: dict[str, Any]) -> None:
        """Keep the optimizer's state in ``Context.state`` when configured."""
        if config.get("keep-optimizer-state", False):
            save_optimizer_state(optimizer, self.state, OPTIMIZER_STATE_KEY)

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        """Return ``shared_model``'s state dict as a flat list."""
        return state_to_numpy(self.shared_model)

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """Run the local epochs; return the shared arrays (then ``z``, ``y``, batch sizes)."""
        self.load_parameters(parameters, config)
        server_round = int(config["server-round"])
        torch.manual_seed(derive_seed(config["seed"], server_round, self.partition_id, "client"))
        generator = torch.Generator().manual_seed(derive_seed(config["seed"], server_round, self.partition_id, "batches"))
        optimizer = make_adam(self.trained_model, float(config["lr"]), float(config["weight-decay"]))
        self.prepare_optimizer(optimizer, config)
        meter = PeakMemoryMeter(self.held_models)
        uploads, steps = run_local_epochs(
            lambda xb, yb: self.step(optimizer, xb, yb, meter),
            self.x,
            self.y,
            epochs=int(config["local-epochs"]),
            batch_size=int(config["batch-size"]),
            generator=generator,
            upload_interval=int(config["upload-interval"]) if self.uploads_smashed else None,
        )
        self.finish_optimizer(optimizer, config)
        arrays = self.get_parameters({})
        if self.uploads_smashed:
            arrays += pack_uploads(uploads, self.split.cut_shape)
        metrics = {"partition-id": self.partition_id, "local-steps": steps, "peak-memory-bytes": meter.peak_bytes}
        return arrays, len(self.y), metrics
