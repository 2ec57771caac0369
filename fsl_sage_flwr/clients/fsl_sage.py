"""The FSL-SAGE client: a Flower NumPyClient around the split client model and its aux."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord
from torch import nn

from fsl_sage_flwr.clients.common import load_named
from fsl_sage_flwr.clients.local_training import LocalTrainingClient
from fsl_sage_flwr.core.estimation import client_step, preserved_buffers
from fsl_sage_flwr.core.memory import PeakMemoryMeter
from fsl_sage_flwr.core.training import derive_seed, minibatches
from fsl_sage_flwr.transport.replies import TrainReply
from fsl_sage_flwr.transport.requests import TrainRequest
from fsl_sage_flwr.transport.uploads import pack_uploads

AUX_STATE_KEY = "fsl-sage.aux"


class FSLSageClient(LocalTrainingClient):
    """Train the client-side model with cut-layer gradients from the auxiliary model.

    Implements the client side of FSL-SAGE (Nair et al., ICML 2025, Alg. 1): every
    local step backpropagates the auxiliary model's input gradient through the
    client model, and every q-th step keeps ``(z, y)`` for upload. The auxiliary
    model is never trained here; the server aligns it and sends it down. It lives
    in Flower's ``Context.state`` between rounds, with the optimizer state when
    ``keep-optimizer-state`` is set.

    Serve it as any NumPyClient (``ClientApp(client_fn=lambda ctx: client.to_client())``)
    or through :func:`fsl_sage_flwr.register_client`; the warm-up before round 1
    is an ordinary ``fit`` call whose config says ``warmup``.
    """

    @property
    def shared_model(self) -> nn.Module:
        """The client-side model: the only model averaged."""
        return self.split.client

    @property
    def held_models(self) -> list[nn.Module]:
        """Client model and auxiliary model."""
        return [self.split.client, self.split.aux]

    @property
    def aux_keys(self) -> list[str]:
        """The auxiliary model's state-dict names: the server sends it when re-aligned."""
        return list(self.split.aux.state_dict())

    def step(
        self, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, meter: PeakMemoryMeter
    ) -> torch.Tensor:
        """Backpropagate the auxiliary model's cut-layer gradient estimate."""
        return client_step(self.split.client, self.split.aux, optimizer, x, y, meter, self.split.loss)

    def load_request(self, request: TrainRequest) -> None:
        """Load the client model, and the aux when sent (else the one kept in state)."""
        load_named(self.split.client, request.shared)
        if request.aux is not None:
            load_named(self.split.aux, request.aux)
            self.state[AUX_STATE_KEY] = ArrayRecord(self.split.aux.state_dict())
        elif AUX_STATE_KEY in self.state:
            self.split.aux.load_state_dict(self.state[AUX_STATE_KEY].to_torch_state_dict())
        else:
            raise ValueError("no auxiliary model yet: the server sends one with the first round")

    def warm_up(self, request: TrainRequest) -> TrainReply:
        """Return one batch of activations of the initial model, without training.

        The server aligns the still-random auxiliary model on it before round 1,
        the Flower counterpart of the reference's alignment at round 0.
        """
        load_named(self.split.client, request.shared)
        seed = derive_seed(request.training.seed, 0, self.partition_id, "warmup")
        xb, yb = next(minibatches(self.x, self.y, request.training.batch_size, torch.Generator().manual_seed(seed)))
        with torch.no_grad(), preserved_buffers(self.split.client):
            self.split.client.train()
            z = self.split.client(xb)
        smashed = pack_uploads([(z, yb)], self.split.cut_shape, request.training.upload_dtype, self.split.labels)
        return TrainReply(partition_id=self.partition_id, num_examples=len(self.y), smashed=smashed)
