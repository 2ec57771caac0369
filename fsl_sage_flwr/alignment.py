"""Auxiliary-model alignment: fit its input gradients to the server's."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fsl_sage_flwr.estimation import input_gradient, preserved_buffers


@dataclass(frozen=True)
class AlignmentSettings:
    """Auxiliary alignment of FSL-SAGE (paper defaults, Nair et al., ICML 2025)."""

    interval: int = 10
    buffer_size: int = 1000
    epochs: int = 100
    batch_size: int = 1000
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0


@dataclass(frozen=True)
class AlignmentReport:
    """Gradient-matching loss and cosine similarity before and after alignment."""

    loss_before: float
    loss_after: float
    cosine_before: float
    cosine_after: float
    num_samples: int


def server_cut_gradients(
    server: nn.Module, z: torch.Tensor, y: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Return the alignment targets ``G = d/dZ sum_n NLL(s(Z_n), Y_n)``.

    Per-sample (sum-reduced) gradients, computed in train mode like the server's
    own training passes, in chunks of ``batch_size`` (the alignment minibatch).
    The server's BatchNorm running statistics are left as they were: buffered
    activations are stale and must not move them (Nair et al., ICML 2025, Alg. 1).
    """
    targets = []
    with preserved_buffers(server):
        server.train()
        for start in range(0, z.shape[0], batch_size):
            chunk = slice(start, start + batch_size)
            targets.append(input_gradient(server, z[chunk], y[chunk], reduction="sum"))
    return torch.cat(targets).detach()


def gradient_matching_loss(
    aux: nn.Module, z: torch.Tensor, y: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Return ``sum (d/dz sum_n NLL(a(z_n), y_n) - target)^2`` with a live graph."""
    z = z.detach().requires_grad_(True)
    estimate = input_gradient(aux, z, y, reduction="sum", create_graph=True)
    return (estimate - target).pow(2).sum()


def align_auxiliary(
    aux: nn.Module,
    optimizer: torch.optim.Optimizer,
    server: nn.Module,
    z: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator | None = None,
) -> AlignmentReport:
    """Align one client's auxiliary model to the server model on its buffer.

    Minimises the gradient-matching loss between the auxiliary model's and the
    server model's per-sample cut-layer gradients with double backprop (Nair et
    al., ICML 2025, Eq. 6). The caller keeps ``optimizer`` across alignments, as
    the reference does.

    Parameters
    ----------
    aux : nn.Module
        The server's copy of the client's auxiliary model; trained in place.
    optimizer : torch.optim.Optimizer
        Optimizer over ``aux``'s parameters.
    server : nn.Module
        The current server-side model (not modified).
    z, y : torch.Tensor
        The client's buffered activations and labels.
    epochs : int
        Passes over the buffer.
    batch_size : int
        Minibatch size of the matching loss.
    generator : torch.Generator, optional
        Seeds the minibatch order.

    Returns
    -------
    AlignmentReport
        Matching loss and cosine similarity on the whole buffer before and after.
    """
    target = server_cut_gradients(server, z, y, batch_size)
    before = _evaluate_match(aux, z, y, target, batch_size)
    aux.train()
    for _ in range(epochs):
        order = torch.randperm(z.shape[0], generator=generator)
        for start in range(0, z.shape[0], batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            gradient_matching_loss(aux, z[idx], y[idx], target[idx]).backward()
            optimizer.step()
    after = _evaluate_match(aux, z, y, target, batch_size)
    return AlignmentReport(before[0], after[0], before[1], after[1], int(z.shape[0]))


def _evaluate_match(
    aux: nn.Module,
    z: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor,
    batch_size: int,
) -> tuple[float, float]:
    """Matching loss and mean cosine similarity, without touching aux's state."""
    with preserved_buffers(aux):
        aux.train()
        estimate = torch.cat(
            [
                input_gradient(aux, z[s : s + batch_size], y[s : s + batch_size], reduction="sum")
                for s in range(0, z.shape[0], batch_size)
            ]
        )
    loss = float((estimate - target).pow(2).sum())
    cosine = F.cosine_similarity(estimate.flatten(1), target.flatten(1), dim=1, eps=1e-12)
    return loss, float(cosine.mean())
