"""The FedAvg baseline client: every client trains the whole (client + server) model."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.client import NumPyClient

from clients.common import load_numpy, state_to_numpy
from fsl_sage_flwr.data import ArrayDataset
from fsl_sage_flwr.estimation import cross_entropy_step
from fsl_sage_flwr.memory import PeakMemoryMeter
from fsl_sage_flwr.models import SplitModel, build_full_model
from fsl_sage_flwr.training import derive_seed, make_adam, run_local_epochs


class FedAvgClient(NumPyClient):
    """Train the full model locally for Flower's own FedAvg (McMahan et al., 2017).

    The same split network as the split algorithms, joined back together
    (``build_full_model``), so the comparison differs only in the algorithm.
    The flat parameter list is the full model's state dict.
    """

    uploads_smashed = False

    def __init__(self, split: SplitModel, trainset: ArrayDataset, partition_id: int, state: Any) -> None:
        self.split = split
        self.shared_model = build_full_model(split)
        self.x = torch.from_numpy(trainset.images)
        self.y = torch.from_numpy(trainset.labels)
        self.partition_id = partition_id

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        """Return the full model's state dict as a flat list."""
        return state_to_numpy(self.shared_model)

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """Run the local epochs on the full model; return its weights."""
        load_numpy(self.shared_model, parameters)
        server_round = int(config["server-round"])
        torch.manual_seed(derive_seed(config["seed"], server_round, self.partition_id, "client"))
        generator = torch.Generator().manual_seed(derive_seed(config["seed"], server_round, self.partition_id, "batches"))
        optimizer = make_adam(self.shared_model, float(config["lr"]), float(config["weight-decay"]))
        meter = PeakMemoryMeter([self.shared_model])
        _, steps = run_local_epochs(
            lambda xb, yb: cross_entropy_step(self.shared_model, None, optimizer, xb, yb, meter),
            self.x,
            self.y,
            epochs=int(config["local-epochs"]),
            batch_size=int(config["batch-size"]),
            generator=generator,
            upload_interval=None,
        )
        metrics = {"partition-id": self.partition_id, "local-steps": steps, "peak-memory-bytes": meter.peak_bytes}
        return self.get_parameters({}), len(self.y), metrics
