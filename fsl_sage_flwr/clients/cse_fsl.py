"""The CSE-FSL client: client model and auxiliary head trained on a local loss."""

from __future__ import annotations

from functools import cached_property

import torch
from torch import nn

from fsl_sage_flwr.clients.local_training import LocalTrainingClient
from fsl_sage_flwr.core.estimation import supervised_step
from fsl_sage_flwr.core.memory import PeakMemoryMeter


class CSEFSLClient(LocalTrainingClient):
    """Train client model and auxiliary head with local cross-entropy; upload ``z`` every q steps.

    The client side of CSE-FSL (Mu and Shen, "Communication and Storage Efficient
    Federated Split Learning"), the baseline of Nair et al., ICML 2025: the
    auxiliary head is a local classifier trained with the client model, and both
    are averaged by the server each round. The flat parameter list is the state
    dict of ``{"client": ..., "aux": ...}``; ``fit`` returns it followed by ``z``,
    ``y`` and the upload batch sizes.
    """

    @cached_property
    def shared_model(self) -> nn.Module:
        """Client model and auxiliary head, averaged together."""
        return nn.ModuleDict({"client": self.split.client, "aux": self.split.aux})

    def step(
        self, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, meter: PeakMemoryMeter
    ) -> torch.Tensor:
        """The split's loss (cross-entropy by default) of the auxiliary head on the client model's output."""
        return supervised_step(self.split.client, self.split.aux, optimizer, x, y, meter, self.split.loss)
