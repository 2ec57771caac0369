"""The FSL-SAGE client: a Flower NumPyClient around the split client model and its aux."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn

from clients.common import load_numpy
from clients.local_training import LocalTrainingClient
from fsl_sage_flwr.estimation import client_step, preserved_buffers
from fsl_sage_flwr.memory import PeakMemoryMeter
from fsl_sage_flwr.training import derive_seed, minibatches

AUX_STATE_KEY = "fsl-sage.aux"


class FSLSageClient(LocalTrainingClient):
    """Train the client-side model with cut-layer gradients from the auxiliary model.

    Implements the client side of FSL-SAGE (Nair et al., ICML 2025, Alg. 1): every
    local step backpropagates the auxiliary model's input gradient through the
    client model, and every q-th step keeps ``(z, y)`` for upload. The auxiliary
    model is never trained here; the server aligns it and sends it down. It lives
    in Flower's ``Context.state`` between rounds, with the optimizer state when
    ``keep-optimizer-state`` is set.

    The flat parameter list of ``fit`` is the client model's state dict in order,
    followed by the auxiliary model's when ``config["aux-included"]`` is true. It
    returns the client model's state dict in order, then ``z``, ``y`` and the
    upload batch sizes (``fsl_sage_flwr.wire`` gives the records around them).
    """

    @property
    def shared_model(self) -> nn.Module:
        """The client-side model: the only model averaged."""
        return self.split.client

    @property
    def held_models(self) -> list[nn.Module]:
        """Client model and auxiliary model."""
        return [self.split.client, self.split.aux]

    def step(
        self, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, meter: PeakMemoryMeter
    ) -> torch.Tensor:
        """Backpropagate the auxiliary model's cut-layer gradient estimate."""
        return client_step(self.split.client, self.split.aux, optimizer, x, y, meter)

    def load_parameters(self, parameters: list[np.ndarray], config: dict[str, Any]) -> None:
        """Load the client model, and the aux when sent (else the one kept in state)."""
        n_client = len(self.split.client.state_dict())
        load_numpy(self.split.client, parameters[:n_client])
        if config.get("aux-included", False):
            load_numpy(self.split.aux, parameters[n_client:])
            self.state[AUX_STATE_KEY] = ArrayRecord(self.split.aux.state_dict())
        elif AUX_STATE_KEY in self.state:
            if len(parameters) != n_client:
                raise ValueError(f"expected {n_client} arrays, got {len(parameters)}")
            self.split.aux.load_state_dict(self.state[AUX_STATE_KEY].to_torch_state_dict())
        else:
            raise ValueError("no auxiliary model yet: the server sends one with the first round")

    def warmup_batch(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Return one batch of activations of the initial model, without training.

        The server aligns the still-random auxiliary model on it before round 1,
        the Flower counterpart of the reference's alignment at round 0.
        """
        load_numpy(self.split.client, parameters)
        generator = torch.Generator().manual_seed(derive_seed(config["seed"], 0, self.partition_id, "warmup"))
        xb, yb = next(minibatches(self.x, self.y, int(config["batch-size"]), generator))
        with torch.no_grad(), preserved_buffers(self.split.client):
            self.split.client.train()
            z = self.split.client(xb)
        return z.numpy().astype(np.float32), yb.numpy().astype(np.int64)
