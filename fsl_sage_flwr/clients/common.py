"""Helpers the clients share: loading arrays into models, optimizer state in Context."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, RecordDict
from torch import nn

from fsl_sage_flwr.data import ArrayDataset


def state_to_numpy(module: nn.Module) -> list[np.ndarray]:
    """Return a module's state dict as a flat list of arrays, in state-dict order."""
    return [t.detach().cpu().numpy().copy() for t in module.state_dict().values()]


def dataset_tensors(trainset: ArrayDataset, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A client's inputs and labels as tensors on ``device``."""
    return torch.from_numpy(trainset.images).to(device), torch.from_numpy(trainset.labels).to(device)


def load_named(module: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Load named arrays into ``module``; raise ValueError unless the names match exactly."""
    expected = list(module.state_dict())
    if list(arrays) != expected:
        raise ValueError(f"expected the {len(expected)} arrays of {type(module).__name__}, got {len(arrays)}")
    module.load_state_dict({k: torch.from_numpy(np.asarray(a)) for k, a in arrays.items()})


def load_numpy(module: nn.Module, arrays: list[np.ndarray]) -> None:
    """Load a flat list of arrays (state-dict order) into ``module``."""
    keys = list(module.state_dict())
    if len(arrays) != len(keys):
        raise ValueError(f"expected {len(keys)} arrays, got {len(arrays)}")
    module.load_state_dict({k: torch.from_numpy(np.asarray(a)) for k, a in zip(keys, arrays)})


def save_optimizer_state(optimizer: torch.optim.Optimizer, state: RecordDict, key: str) -> None:
    """Keep an optimizer's per-parameter tensors in Flower's ``Context.state``."""
    # Adam keeps tensors per parameter; flatten them as "<param index>.<name>".
    flat = {
        f"{index}.{name}": torch.as_tensor(value).clone()
        for index, slots in optimizer.state_dict()["state"].items()
        for name, value in slots.items()
    }
    state[key] = ArrayRecord(flat)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: RecordDict, key: str) -> None:
    """Restore what :func:`save_optimizer_state` kept, if anything."""
    if key not in state:
        return
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in state[key].to_torch_state_dict().items():
        index, slot = name.split(".", 1)
        slots.setdefault(int(index), {})[slot] = value
    optimizer.load_state_dict({"state": slots, "param_groups": optimizer.state_dict()["param_groups"]})
