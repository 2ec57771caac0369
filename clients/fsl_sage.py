"""The FSL-SAGE client: a Flower NumPyClient around the split client model and its aux."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict
from flwr.client import NumPyClient

from clients.common import load_numpy, load_optimizer_state, pack_uploads, save_optimizer_state, state_to_numpy
from fsl_sage_flwr.data import ArrayDataset
from fsl_sage_flwr.estimation import client_step, preserved_buffers
from fsl_sage_flwr.memory import PeakMemoryMeter
from fsl_sage_flwr.models import SplitModel
from fsl_sage_flwr.training import derive_seed, make_adam, minibatches, run_local_epochs

AUX_STATE_KEY = "fsl-sage.aux"
OPTIMIZER_STATE_KEY = "fsl-sage.client-optimizer"


class FSLSageClient(NumPyClient):
    """Train the client-side model with cut-layer gradients from the auxiliary model.

    Implements the client side of FSL-SAGE (Nair et al., ICML 2025, Alg. 1): every
    local step backpropagates the auxiliary model's input gradient through the
    client model, and every q-th step keeps ``(z, y)`` for upload. The auxiliary
    model is never trained here; the server aligns it and sends it down.

    The flat parameter list of ``fit`` is the client model's state dict in order,
    followed by the auxiliary model's when ``config["aux-included"]`` is true. It
    returns the client model's state dict in order, then ``z``, ``y`` and the
    upload batch sizes (``fsl_sage_flwr.wire`` gives the records around them).

    Parameters
    ----------
    split : SplitModel
        Freshly built models; the client and aux parts are used.
    trainset : ArrayDataset
        This client's partition.
    partition_id : int
        Reported to the server, which orders replies by it.
    state : RecordDict
        Flower's per-node ``Context.state``: holds the auxiliary model (and the
        optimizer state when kept) across rounds.
    """

    uploads_smashed = True

    def __init__(self, split: SplitModel, trainset: ArrayDataset, partition_id: int, state: RecordDict) -> None:
        self.split = split
        self.x = torch.from_numpy(trainset.images)
        self.y = torch.from_numpy(trainset.labels)
        self.partition_id = partition_id
        self.state = state

    @property
    def shared_model(self) -> torch.nn.Module:
        """The module whose state travels in the ``arrays`` record."""
        return self.split.client

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        """Return the client model's state dict as a flat list of arrays."""
        return state_to_numpy(self.split.client)

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """Run the local epochs with estimated gradients; return weights and uploads."""
        self._load_parameters(parameters, bool(config.get("aux-included", False)))
        server_round = int(config["server-round"])
        torch.manual_seed(derive_seed(config["seed"], server_round, self.partition_id, "client"))
        generator = torch.Generator().manual_seed(derive_seed(config["seed"], server_round, self.partition_id, "batches"))
        optimizer = make_adam(self.split.client, float(config["lr"]), float(config["weight-decay"]))
        keep_state = bool(config.get("keep-optimizer-state", False))
        if keep_state:
            load_optimizer_state(optimizer, self.state, OPTIMIZER_STATE_KEY)
        meter = PeakMemoryMeter([self.split.client, self.split.aux])

        uploads, steps = run_local_epochs(
            lambda xb, yb: client_step(self.split.client, self.split.aux, optimizer, xb, yb, meter),
            self.x,
            self.y,
            epochs=int(config["local-epochs"]),
            batch_size=int(config["batch-size"]),
            generator=generator,
            upload_interval=int(config["upload-interval"]),
        )
        if keep_state:
            save_optimizer_state(optimizer, self.state, OPTIMIZER_STATE_KEY)
        metrics = {"partition-id": self.partition_id, "local-steps": steps, "peak-memory-bytes": meter.peak_bytes}
        return self.get_parameters({}) + pack_uploads(uploads, self.split.cut_shape), len(self.y), metrics

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

    def _load_parameters(self, parameters: list[np.ndarray], aux_included: bool) -> None:
        n_client = len(self.split.client.state_dict())
        load_numpy(self.split.client, parameters[:n_client])
        if aux_included:
            load_numpy(self.split.aux, parameters[n_client:])
            self.state[AUX_STATE_KEY] = ArrayRecord(self.split.aux.state_dict())
        elif AUX_STATE_KEY in self.state:
            self.split.aux.load_state_dict(self.state[AUX_STATE_KEY].to_torch_state_dict())
        else:
            raise ValueError("no auxiliary model yet: the server sends one with the first round")
