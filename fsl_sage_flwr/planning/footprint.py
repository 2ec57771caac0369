"""Client and server memory of each algorithm, measured by running real steps of the user's modules."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import Optimizer

from fsl_sage_flwr.core.devices import autocast
from fsl_sage_flwr.core.estimation import apply_cut_gradient, client_step, server_step, supervised_step
from fsl_sage_flwr.core.memory import PeakMemoryMeter, optimizer_nbytes, state_nbytes
from fsl_sage_flwr.core.models import SplitModel, build_full_model
from fsl_sage_flwr.core.training import make_adam
from fsl_sage_flwr.transport.local_training import LocalTraining

#: Steps measured: the second one holds the optimizer state the first one created, as every later step does.
_STEPS = 2


@dataclass(frozen=True)
class ClientMemory:
    """What one client holds while it trains, in bytes, measured on one full batch.

    Attributes
    ----------
    parameters : int
        Parameters and buffers of every model the client holds.
    gradients : int
        Gradients of the trained parameters.
    optimizer : int
        Adam's state (two moments and a step counter per parameter).
    activations : int
        Tensors the forward pass keeps for backward (inputs excluded where they are parameters).
    peak : int
        The peak the client reports (``peak-memory-bytes``): parameters and
        optimizer state plus the larger of activations (after the forward pass)
        and gradients (after the backward pass).
    """

    parameters: int
    gradients: int
    optimizer: int
    activations: int
    peak: int


Step = Callable[[torch.optim.Optimizer, torch.Tensor, torch.Tensor, PeakMemoryMeter], object]


def measure_client(
    held: list[nn.Module], trained: nn.Module, step: Step, x: torch.Tensor, y: torch.Tensor, training: LocalTraining
) -> ClientMemory:
    """Run two steps of ``step`` on one batch; return what the client held.

    The modules are copies; the caller's stay as they were.
    """
    held_copies = copy.deepcopy(held)
    index = next(i for i, m in enumerate(held) if m is trained)
    optimizer = make_adam(held_copies[index], training.lr, training.weight_decay)
    meter = PeakMemoryMeter(held_copies)
    for _ in range(_STEPS):
        with autocast(x.device, training.autocast):
            step(optimizer, x, y, meter)
    return ClientMemory(
        parameters=sum(state_nbytes(m) for m in held_copies),
        gradients=sum(p.grad.nbytes for p in held_copies[index].parameters() if p.grad is not None),
        optimizer=optimizer_nbytes(optimizer),
        activations=meter.saved_bytes,
        peak=meter.peak_bytes,
    )


def client_memory(
    split: SplitModel, x: torch.Tensor, y: torch.Tensor, training: LocalTraining
) -> dict[str, ClientMemory]:
    """Each algorithm's client, measured with the step its client runs (``fsl_sage_flwr.clients``)."""
    aux, client = split.aux, split.client
    joined = nn.ModuleDict({"client": client, "aux": aux})
    full = build_full_model(split)

    def fsl_sage(optimizer: Optimizer, xb: Tensor, yb: Tensor, meter: PeakMemoryMeter) -> Tensor:
        client_m, aux_m = meter.modules
        return client_step(client_m, aux_m, optimizer, xb, yb, meter)

    def cse_fsl(optimizer: Optimizer, xb: Tensor, yb: Tensor, meter: PeakMemoryMeter) -> Tensor:
        (both,) = meter.modules
        return supervised_step(both["client"], both["aux"], optimizer, xb, yb, meter)

    def fedavg(optimizer: Optimizer, xb: Tensor, yb: Tensor, meter: PeakMemoryMeter) -> Tensor:
        (model,) = meter.modules
        return supervised_step(model, None, optimizer, xb, yb, meter)

    with torch.no_grad():
        cut_gradient = torch.randn_like(client(x)) / x.shape[0]

    def splitfed(optimizer: Optimizer, xb: Tensor, yb: Tensor, meter: PeakMemoryMeter) -> None:
        (client_m,) = meter.modules
        apply_cut_gradient(client_m, optimizer, xb, cut_gradient, meter)

    splitfed_memory = measure_client([client], client, splitfed, x, y, training)
    return {
        "fsl-sage": measure_client([client, aux], client, fsl_sage, x, y, training),
        "cse-fsl": measure_client([joined], joined, cse_fsl, x, y, training),
        "splitfed-ms": splitfed_memory,
        "splitfed-ss": splitfed_memory,
        "fedavg": measure_client([full], full, fedavg, x, y, training),
    }


@dataclass(frozen=True)
class ServerParts:
    """Bytes of what the servers hold, measured once after a real optimizer step.

    Attributes
    ----------
    server : int
        The server model's parameters and buffers.
    server_optimizer : int
        Its Adam state.
    aux : int
        One auxiliary model's parameters and buffers.
    aux_optimizer : int
        Its Adam state (FSL-SAGE's server aligns each client's aux with its own).
    full : int
        The joined model's parameters and buffers (FedAvg's server).
    """

    server: int
    server_optimizer: int
    aux: int
    aux_optimizer: int
    full: int


def server_parts(split: SplitModel, z: torch.Tensor, y: torch.Tensor, training: LocalTraining) -> ServerParts:
    """Step copies of the server model and the aux once with Adam; measure their state."""
    server, aux = copy.deepcopy(split.server), copy.deepcopy(split.aux)
    server_optimizer = make_adam(server, training.lr, training.weight_decay)
    server_step(server, server_optimizer, z.detach(), y)
    aux_optimizer = make_adam(aux, training.lr, training.weight_decay)
    aux.train()
    aux_optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(aux(z.detach()), y).backward()
    aux_optimizer.step()
    return ServerParts(
        server=state_nbytes(server),
        server_optimizer=optimizer_nbytes(server_optimizer),
        aux=state_nbytes(aux),
        aux_optimizer=optimizer_nbytes(aux_optimizer),
        full=state_nbytes(split.client) + state_nbytes(split.server),
    )
