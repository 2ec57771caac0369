"""Auxiliary-model alignment: fit its input gradients to the server's."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fsl_sage_flwr.estimation import input_gradient, preserved_buffers


@dataclass(frozen=True)
class AlignmentSettings:
    """Auxiliary alignment of FSL-SAGE (Nair et al., ICML 2025).

    The app's defaults (``RunSettings`` takes them): the paper's, but for the
    small digits set l = 5 (paper: 10) and 30 epochs (paper: 100).
    """

    interval: int = 5
    buffer_size: int = 1000
    epochs: int = 30
    batch_size: int = 1000
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    patience: int = 0
    """Stop after this many epochs without a ``min_improvement`` gain; 0 runs every epoch (the paper)."""
    min_improvement: float = 0.01
    """Relative drop of an epoch's matching loss that counts as a gain."""


@dataclass(frozen=True)
class AlignmentReport:
    """Gradient-matching loss and cosine similarity before and after alignment, and its cost."""

    loss_before: float
    loss_after: float
    cosine_before: float
    cosine_after: float
    num_samples: int
    epochs: int = 0
    seconds: float = 0.0


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
        for chunk in chunks(z.shape[0], batch_size):
            targets.append(input_gradient(server, z[chunk], y[chunk], reduction="sum"))
    return torch.cat(targets).detach()


def chunks(n: int, size: int) -> list[slice]:
    """Consecutive slices of at most ``size`` covering ``range(n)``, none of one sample.

    BatchNorm in train mode cannot normalise a single sample, so a one-sample
    tail joins the chunk before it.
    """
    bounds = list(range(0, n, size)) + [n]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
        del bounds[-2]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


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
    patience: int = 0,
    min_improvement: float = 0.01,
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
    patience : int
        Early stop: end after ``patience`` epochs in a row whose summed matching
        loss fell by less than ``min_improvement`` (relative) below the best so
        far. 0 runs all ``epochs``, as the paper does.
    min_improvement : float
        The relative gain an epoch must make to count as one.

    Returns
    -------
    AlignmentReport
        Matching loss and cosine similarity on the whole buffer before and after,
        the epochs run and the seconds taken.
    """
    started = time.perf_counter()
    target = server_cut_gradients(server, z, y, batch_size)
    before = _evaluate_match(aux, z, y, target, batch_size)
    aux.train()
    best, stale, epochs_run = math.inf, 0, 0
    for _ in range(epochs):
        order = torch.randperm(z.shape[0], generator=generator).to(z.device)
        epoch_loss = torch.zeros((), device=z.device)
        for chunk in chunks(z.shape[0], batch_size):
            idx = order[chunk]
            optimizer.zero_grad(set_to_none=True)
            loss = gradient_matching_loss(aux, z[idx], y[idx], target[idx])
            loss.backward()
            optimizer.step()
            epoch_loss += loss.detach()
        epochs_run += 1
        if patience:
            # One host sync per epoch, and only when stopping early is asked for.
            value = float(epoch_loss)
            if value < best * (1.0 - min_improvement):
                best, stale = value, 0
            else:
                stale += 1
                if stale >= patience:
                    break
    after = _evaluate_match(aux, z, y, target, batch_size)
    return AlignmentReport(
        before[0], after[0], before[1], after[1], int(z.shape[0]), epochs_run, time.perf_counter() - started
    )


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
                input_gradient(aux, z[chunk], y[chunk], reduction="sum")
                for chunk in chunks(z.shape[0], batch_size)
            ]
        )
    loss = float((estimate - target).pow(2).sum())
    cosine = F.cosine_similarity(estimate.flatten(1), target.flatten(1), dim=1, eps=1e-12)
    return loss, float(cosine.mean())
