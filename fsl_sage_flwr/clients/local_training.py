"""The local round every NumPyClient here shares: seed, optimizer, epochs, uploads, memory."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import RecordDict
from flwr.client import NumPyClient
from torch import nn

from fsl_sage_flwr.clients.common import (
    dataset_tensors,
    load_named,
    load_optimizer_state,
    save_optimizer_state,
    state_to_numpy,
)
from fsl_sage_flwr.core.devices import autocast
from fsl_sage_flwr.core.memory import PeakMemoryMeter
from fsl_sage_flwr.core.models import SplitModel
from fsl_sage_flwr.core.training import derive_seed, make_adam, run_local_epochs
from fsl_sage_flwr.data import ArrayDataset
from fsl_sage_flwr.transport.replies import TrainReply
from fsl_sage_flwr.transport.requests import TrainRequest, decode_request
from fsl_sage_flwr.transport.uploads import pack_uploads

OPTIMIZER_STATE_KEY = "client-optimizer"


class LocalTrainingClient(NumPyClient):
    """A NumPyClient that runs E local epochs and, for split methods, keeps ``(z, y)``.

    Subclasses say which module travels (``shared_model``), which one the
    optimizer trains (``trained_model``), which models the client holds
    (``held_models``, for the memory meter), and what one step is (``step``).
    Every training setting comes from the request (``fsl_sage_flwr.transport.requests``), so a
    client trains with exactly what the server checks its reply against. Seeds
    derive from (seed, round, partition), so runs repeat exactly.

    Parameters
    ----------
    split : SplitModel
        Freshly built models.
    trainset : ArrayDataset
        This client's training data.
    partition_id : int
        This node's stable id, reported to the server, which orders replies by it.
    state : RecordDict
        Flower's per-node ``Context.state``.
    device : torch.device or str
        Where the client trains (see ``fsl_sage_flwr.core.devices``).
    """

    uploads_smashed = True

    def __init__(
        self,
        split: SplitModel,
        trainset: ArrayDataset,
        partition_id: int,
        state: RecordDict,
        device: torch.device | str = "cpu",
    ) -> None:
        if len(trainset) < 2:
            raise ValueError(f"partition {partition_id} holds {len(trainset)} samples; training needs at least 2")
        self.device = torch.device(device)
        self.split = split.to(self.device)
        self.x, self.y = dataset_tensors(trainset, self.device)
        self.partition_id = int(partition_id)
        self.state = state

    @property
    def shared_model(self) -> nn.Module:
        """The module whose state travels to and from the server."""
        raise NotImplementedError

    @property
    def trained_model(self) -> nn.Module:
        """The module the local optimizer updates."""
        return self.shared_model

    @property
    def held_models(self) -> list[nn.Module]:
        """Every model the client keeps in memory while it trains."""
        return [self.shared_model]

    @property
    def aux_keys(self) -> list[str]:
        """State-dict names of a model the server may send besides ``shared_model``."""
        return []

    def step(
        self, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, meter: PeakMemoryMeter
    ) -> torch.Tensor:
        """Run one local step; return the (detached) cut-layer activations."""
        raise NotImplementedError

    def load_request(self, request: TrainRequest) -> None:
        """Load the request's models."""
        load_named(self.shared_model, request.shared)

    def warm_up(self, request: TrainRequest) -> TrainReply:
        """Answer a warm-up request (FSL-SAGE only)."""
        raise ValueError(f"{type(self).__name__} takes part in no warm-up exchange")

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        """Return ``shared_model``'s state dict as a flat list."""
        return state_to_numpy(self.shared_model)

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """Run a local round (or a warm-up); return the arrays laid out by ``fsl_sage_flwr.transport.replies``."""
        request = decode_request(
            parameters, config, shared_keys=list(self.shared_model.state_dict()), aux_keys=self.aux_keys
        )
        reply = self.warm_up(request) if request.warmup else self.train(request)
        return reply.to_fit_result()

    def train(self, request: TrainRequest) -> TrainReply:
        """Run the local epochs of one round with the request's settings."""
        self.load_request(request)
        training, server_round = request.training, request.server_round
        torch.manual_seed(derive_seed(training.seed, server_round, self.partition_id, "client"))
        generator = torch.Generator().manual_seed(
            derive_seed(training.seed, server_round, self.partition_id, "batches")
        )
        optimizer = make_adam(self.trained_model, training.lr, training.weight_decay)
        if training.keep_optimizer_state:
            load_optimizer_state(optimizer, self.state, OPTIMIZER_STATE_KEY)
        meter = PeakMemoryMeter(self.held_models)

        def step(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            with autocast(self.device, training.autocast):
                return self.step(optimizer, xb, yb, meter)

        uploads, steps = run_local_epochs(
            step,
            self.x,
            self.y,
            epochs=training.local_epochs,
            batch_size=training.batch_size,
            generator=generator,
            upload_interval=training.upload_interval if self.uploads_smashed else None,
        )
        if training.keep_optimizer_state:
            save_optimizer_state(optimizer, self.state, OPTIMIZER_STATE_KEY)
        smashed = (
            pack_uploads(uploads, self.split.cut_shape, training.upload_dtype, self.split.labels)
            if self.uploads_smashed
            else None
        )
        return TrainReply(
            partition_id=self.partition_id,
            num_examples=len(self.y),
            shared=dict(zip(self.shared_model.state_dict(), self.get_parameters({}))),
            smashed=smashed,
            local_steps=steps,
            peak_memory_bytes=meter.peak_bytes,
        )
