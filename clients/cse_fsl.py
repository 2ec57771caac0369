"""The CSE-FSL client: client model and auxiliary head trained on a local loss."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.client import NumPyClient
from torch import nn

from clients.common import load_numpy, pack_uploads, state_to_numpy
from fsl_sage_flwr.data import ArrayDataset
from fsl_sage_flwr.estimation import cross_entropy_step
from fsl_sage_flwr.memory import PeakMemoryMeter
from fsl_sage_flwr.models import SplitModel
from fsl_sage_flwr.training import derive_seed, make_adam, run_local_epochs


class CSEFSLClient(NumPyClient):
    """Train client model and auxiliary head with local cross-entropy; upload ``z`` every q steps.

    The client side of CSE-FSL (Mu and Shen, "Communication and Storage Efficient
    Federated Split Learning"), the baseline of Nair et al., ICML 2025: the
    auxiliary head is a local classifier trained with the client model, and both
    are averaged by the server each round. The flat parameter list is the state
    dict of ``{"client": ..., "aux": ...}``; ``fit`` returns it followed by ``z``,
    ``y`` and the upload batch sizes.
    """

    uploads_smashed = True

    def __init__(self, split: SplitModel, trainset: ArrayDataset, partition_id: int, state: Any) -> None:
        self.split = split
        self.shared_model = nn.ModuleDict({"client": split.client, "aux": split.aux})
        self.x = torch.from_numpy(trainset.images)
        self.y = torch.from_numpy(trainset.labels)
        self.partition_id = partition_id

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        """Return client and auxiliary state dicts as one flat list."""
        return state_to_numpy(self.shared_model)

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """Run the local epochs on the local loss; return weights and uploads."""
        load_numpy(self.shared_model, parameters)
        server_round = int(config["server-round"])
        torch.manual_seed(derive_seed(config["seed"], server_round, self.partition_id, "client"))
        generator = torch.Generator().manual_seed(derive_seed(config["seed"], server_round, self.partition_id, "batches"))
        optimizer = make_adam(self.shared_model, float(config["lr"]), float(config["weight-decay"]))
        meter = PeakMemoryMeter([self.shared_model])
        uploads, steps = run_local_epochs(
            lambda xb, yb: cross_entropy_step(self.split.client, self.split.aux, optimizer, xb, yb, meter),
            self.x,
            self.y,
            epochs=int(config["local-epochs"]),
            batch_size=int(config["batch-size"]),
            generator=generator,
            upload_interval=int(config["upload-interval"]),
        )
        metrics = {"partition-id": self.partition_id, "local-steps": steps, "peak-memory-bytes": meter.peak_bytes}
        return self.get_parameters({}) + pack_uploads(uploads, self.split.cut_shape), len(self.y), metrics
