"""The SplitFed client: one Flower message pair per batch with the server."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fsl_sage_flwr.clients.common import dataset_tensors, load_numpy, load_optimizer_state, save_optimizer_state
from fsl_sage_flwr.core.devices import autocast
from fsl_sage_flwr.core.estimation import apply_cut_gradient
from fsl_sage_flwr.core.memory import PeakMemoryMeter
from fsl_sage_flwr.core.models import SplitModel
from fsl_sage_flwr.core.training import derive_seed, make_adam, minibatches
from fsl_sage_flwr.data import ArrayDataset
from fsl_sage_flwr.transport.keys import (
    NUM_BATCHES_KEY,
    NUM_EXAMPLES_KEY,
    PARTITION_ID_KEY,
    PEAK_MEMORY_KEY,
    SERVER_ROUND_KEY,
    STEP_KEY,
)
from fsl_sage_flwr.transport.local_training import LocalTraining
from fsl_sage_flwr.transport.uploads import pack_uploads

MODEL_STATE_KEY = "splitfed.client"
OPTIMIZER_STATE_KEY = "splitfed.client-optimizer"
PEAK_STATE_KEY = "splitfed.peak"


class SplitFedClient:
    """Client side of SplitFed (SFL-V1 and SFL-V2): forward now, backward when the gradient comes.

    A client's autograd graph cannot outlive a message, so when the gradient of
    batch k arrives the client recomputes batch k's forward pass (its weights have
    not changed since) with BatchNorm statistics frozen, so that they move once per
    batch, as in centralised training. Weights and optimizer state live in
    Flower's ``Context.state`` between messages.

    Parameters
    ----------
    split : SplitModel
        Freshly built models; the client part is used.
    trainset : ArrayDataset
        This client's partition.
    partition_id : int
        Reported with every reply.
    state : RecordDict
        Flower's per-node ``Context.state``.
    device : torch.device or str
        Where the client trains.
    """

    def __init__(
        self,
        split: SplitModel,
        trainset: ArrayDataset,
        partition_id: int,
        state: RecordDict,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.split = split.to(self.device)
        self.shared_model = split.client
        self.x, self.y = dataset_tensors(trainset, self.device)
        self.partition_id = partition_id
        self.state = state

    def step(
        self, config: dict[str, Any], model: list[np.ndarray] | None, grad: np.ndarray | None
    ) -> tuple[dict[str, np.ndarray] | None, list[np.ndarray] | None, dict[str, Any]]:
        """Apply the gradient of batch ``step - 1`` if given, then forward batch ``step``.

        Returns
        -------
        tuple
            ``(client state dict, None, metrics)`` after the last batch, else
            ``(None, [z, y, batch_sizes], metrics)`` for batch ``step``.
        """
        step, server_round = int(config[STEP_KEY]), int(config[SERVER_ROUND_KEY])
        training = LocalTraining.from_config(config)
        batches = self._batches(training, server_round)
        optimizer = self._restore(model, training)
        meter = PeakMemoryMeter([self.split.client])
        meter.peak_bytes = int(self.state[PEAK_STATE_KEY]["bytes"]) if step and PEAK_STATE_KEY in self.state else 0
        if grad is not None:
            if not 1 <= step <= len(batches):
                raise ValueError(f"gradient for batch {step - 1}, but the round has {len(batches)} batches")
            xb, _ = batches[step - 1]
            with autocast(self.device, training.autocast):
                apply_cut_gradient(self.split.client, optimizer, xb, torch.from_numpy(grad).to(self.device), meter)
        metrics: dict[str, Any] = {
            PARTITION_ID_KEY: self.partition_id,
            NUM_BATCHES_KEY: len(batches),
            NUM_EXAMPLES_KEY: len(self.y),
        }
        if step == len(batches):
            self._save(optimizer, meter.peak_bytes)  # keep-optimizer-state reads it next round
            metrics[PEAK_MEMORY_KEY] = meter.peak_bytes
            return self.split.client.state_dict(), None, metrics
        xb, yb = batches[step]
        with torch.no_grad(), autocast(self.device, training.autocast):
            self.split.client.train()
            z = self.split.client(xb)  # BatchNorm statistics move here, once per batch
        self._save(optimizer, meter.peak_bytes)
        return None, list(pack_uploads([(z, yb)], self.split.cut_shape, labels=self.split.labels)), metrics

    def _batches(self, training: LocalTraining, server_round: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        seed = derive_seed(training.seed, server_round, self.partition_id, "batches")
        batches = []
        generator = torch.Generator().manual_seed(seed)
        for _ in range(training.local_epochs):
            batches.extend(minibatches(self.x, self.y, training.batch_size, generator))
        return batches

    def _restore(self, model: list[np.ndarray] | None, training: LocalTraining) -> torch.optim.Optimizer:
        if model is not None:
            load_numpy(self.split.client, model)
            if not training.keep_optimizer_state:
                self.state.pop(OPTIMIZER_STATE_KEY, None)  # a fresh optimizer every round
        elif MODEL_STATE_KEY in self.state:
            self.split.client.load_state_dict(self.state[MODEL_STATE_KEY].to_torch_state_dict())
        else:
            raise ValueError("no client model yet: step 0 of a round carries it")
        optimizer = make_adam(self.split.client, training.lr, training.weight_decay)
        load_optimizer_state(optimizer, self.state, OPTIMIZER_STATE_KEY)
        return optimizer

    def _save(self, optimizer: torch.optim.Optimizer, peak: int) -> None:
        self.state[MODEL_STATE_KEY] = ArrayRecord(self.split.client.state_dict())
        save_optimizer_state(optimizer, self.state, OPTIMIZER_STATE_KEY)
        self.state[PEAK_STATE_KEY] = ConfigRecord({"bytes": peak})
