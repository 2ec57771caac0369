"""The FSL-SAGE client: a Flower NumPyClient around the split client model and its aux."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict
from flwr.client import NumPyClient

from fsl_sage_flwr.data import ArrayDataset
from fsl_sage_flwr.estimation import client_step, preserved_buffers
from fsl_sage_flwr.models import SplitModel
from fsl_sage_flwr.training import derive_seed, make_adam, minibatches

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
    upload batch sizes (see ``fsl_sage_flwr.wire`` for the records around it).

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

    def __init__(
        self,
        split: SplitModel,
        trainset: ArrayDataset,
        partition_id: int,
        state: RecordDict,
    ) -> None:
        self.split = split
        self.x = torch.from_numpy(trainset.images)
        self.y = torch.from_numpy(trainset.labels)
        self.partition_id = partition_id
        self.state = state
        self._client_keys = list(split.client.state_dict())
        self._aux_keys = list(split.aux.state_dict())

    def get_parameters(self, config: dict[str, Any]) -> list[np.ndarray]:
        """Return the client model's state dict as a flat list of arrays."""
        return _to_numpy(self.split.client.state_dict())

    def fit(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        """Run the local epochs with estimated gradients; return weights and uploads."""
        self._load_parameters(parameters, bool(config.get("aux-included", False)))
        server_round = int(config["server-round"])
        torch.manual_seed(derive_seed(config["seed"], server_round, self.partition_id, "client"))
        generator = torch.Generator().manual_seed(
            derive_seed(config["seed"], server_round, self.partition_id, "batches")
        )
        optimizer = make_adam(self.split.client, float(config["lr"]), float(config["weight-decay"]))
        keep_state = bool(config.get("keep-optimizer-state", False))
        if keep_state:
            _load_optimizer_state(optimizer, self.state)

        uploads: list[tuple[torch.Tensor, torch.Tensor]] = []
        q = int(config["upload-interval"])
        step = 0
        for _ in range(int(config["local-epochs"])):
            for xb, yb in minibatches(self.x, self.y, int(config["batch-size"]), generator):
                z = client_step(self.split.client, self.split.aux, optimizer, xb, yb)
                if step % q == 0:
                    uploads.append((z, yb))
                step += 1

        if keep_state:
            _save_optimizer_state(optimizer, self.state)
        z_all, y_all, sizes = _pack_uploads(uploads, self.split.cut_shape)
        metrics = {"partition-id": self.partition_id, "local-steps": step}
        return self.get_parameters({}) + [z_all, y_all, sizes], len(self.y), metrics

    def warmup_batch(
        self, parameters: list[np.ndarray], config: dict[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return one batch of activations of the initial model, without training.

        The server aligns the still-random auxiliary model on it before round 1,
        the Flower counterpart of the reference's alignment at round 0.
        """
        self._load_client(parameters[: len(self._client_keys)])
        generator = torch.Generator().manual_seed(
            derive_seed(config["seed"], 0, self.partition_id, "warmup")
        )
        xb, yb = next(minibatches(self.x, self.y, int(config["batch-size"]), generator))
        with torch.no_grad(), preserved_buffers(self.split.client):
            self.split.client.train()
            z = self.split.client(xb)
        return z.numpy().astype(np.float32), yb.numpy().astype(np.int64)

    def _load_parameters(self, parameters: list[np.ndarray], aux_included: bool) -> None:
        n_client = len(self._client_keys)
        expected = n_client + (len(self._aux_keys) if aux_included else 0)
        if len(parameters) != expected:
            raise ValueError(f"expected {expected} arrays, got {len(parameters)}")
        self._load_client(parameters[:n_client])
        if aux_included:
            aux_state = dict(zip(self._aux_keys, (torch.from_numpy(a) for a in parameters[n_client:])))
            self.split.aux.load_state_dict(aux_state)
            self.state[AUX_STATE_KEY] = ArrayRecord(self.split.aux.state_dict())
        elif AUX_STATE_KEY in self.state:
            self.split.aux.load_state_dict(self.state[AUX_STATE_KEY].to_torch_state_dict())
        else:
            raise ValueError(
                "no auxiliary model yet: the server sends one with the first round"
            )

    def _load_client(self, arrays: list[np.ndarray]) -> None:
        state = dict(zip(self._client_keys, (torch.from_numpy(np.asarray(a)) for a in arrays)))
        self.split.client.load_state_dict(state)


def _to_numpy(state_dict: dict[str, torch.Tensor]) -> list[np.ndarray]:
    return [t.detach().cpu().numpy().copy() for t in state_dict.values()]


def _pack_uploads(
    uploads: list[tuple[torch.Tensor, torch.Tensor]], cut_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if uploads:
        z = torch.cat([zb for zb, _ in uploads]).numpy().astype(np.float32)
        y = torch.cat([yb for _, yb in uploads]).numpy().astype(np.int64)
    else:
        z = np.zeros((0, *cut_shape), dtype=np.float32)
        y = np.zeros((0,), dtype=np.int64)
    sizes = np.asarray([int(yb.shape[0]) for _, yb in uploads], dtype=np.int64)
    return z, y, sizes


def _save_optimizer_state(optimizer: torch.optim.Optimizer, state: RecordDict) -> None:
    # Adam keeps per-parameter tensors; flatten them as "<param index>.<name>".
    flat = {
        f"{index}.{name}": torch.as_tensor(value).clone()
        for index, slots in optimizer.state_dict()["state"].items()
        for name, value in slots.items()
    }
    state[OPTIMIZER_STATE_KEY] = ArrayRecord(flat)


def _load_optimizer_state(optimizer: torch.optim.Optimizer, state: RecordDict) -> None:
    if OPTIMIZER_STATE_KEY not in state:
        return
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in state[OPTIMIZER_STATE_KEY].to_torch_state_dict().items():
        index, name = key.split(".", 1)
        slots.setdefault(int(index), {})[name] = value
    current = optimizer.state_dict()
    optimizer.load_state_dict({"state": slots, "param_groups": current["param_groups"]})
