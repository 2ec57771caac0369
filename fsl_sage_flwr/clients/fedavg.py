"""The FedAvg baseline client: every client trains the whole (client + server) model."""

from __future__ import annotations

from functools import cached_property

import torch
from torch import nn

from fsl_sage_flwr.clients.local_training import LocalTrainingClient
from fsl_sage_flwr.core.estimation import supervised_step
from fsl_sage_flwr.core.memory import PeakMemoryMeter
from fsl_sage_flwr.core.models import build_full_model


class FedAvgClient(LocalTrainingClient):
    """Train the full model locally for Flower's own FedAvg (McMahan et al., 2017).

    The same split network as the split algorithms, joined back together
    (``build_full_model``), so the comparison differs only in the algorithm.
    The flat parameter list is the full model's state dict.
    """

    uploads_smashed = False

    @cached_property
    def shared_model(self) -> nn.Module:
        """Client and server parts joined: the whole network."""
        return build_full_model(self.split)

    def step(
        self, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, meter: PeakMemoryMeter
    ) -> torch.Tensor:
        """The split's loss (cross-entropy by default) of the full model."""
        return supervised_step(self.shared_model, None, optimizer, x, y, meter, self.split.loss)
