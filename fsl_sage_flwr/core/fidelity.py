"""Gradient fidelity: how well an auxiliary model's cut-layer gradient matches the server's."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fsl_sage_flwr.core.estimation import input_gradient, preserved_buffers
from fsl_sage_flwr.core.losses import CROSS_ENTROPY, SplitLoss


@dataclass(frozen=True)
class Fidelity:
    """Agreement of the estimated and the true cut-layer gradient on one upload.

    Attributes
    ----------
    cosine : float
        Mean over samples of the cosine similarity of ``g_aux`` and ``g_server``.
    relative_error : float
        ``||g_aux - g_server|| / ||g_server||`` over the whole batch.
    num_samples : int
        Samples measured on.
    """

    cosine: float
    relative_error: float
    num_samples: int


def gradient_fidelity(
    aux: nn.Module, server: nn.Module, z: torch.Tensor, y: torch.Tensor, loss: SplitLoss = CROSS_ENTROPY
) -> Fidelity:
    """Compare the aux's estimate ``d/dz L(aux(z), y)`` with the true ``d/dz L(server(z), y)``.

    The quantity FSL-SAGE's alignment drives up (Nair et al., ICML 2025, Sec. 4):
    the client trains on the aux's estimate in place of the server's gradient.
    Both gradients use the batch-mean loss in train mode, like the
    client's and the server's own passes; neither model's weights, gradients or
    BatchNorm statistics change.

    Parameters
    ----------
    aux, server : nn.Module
        The auxiliary model and the server-side model, each mapping ``z`` to logits.
    z : torch.Tensor
        Cut-layer activations, at least two samples (BatchNorm in train mode).
    y : torch.Tensor
        Labels.
    loss : SplitLoss
        The split's loss (cross-entropy by default).

    Returns
    -------
    Fidelity
        Mean cosine, relative error and sample count.
    """
    if z.shape[0] < 2:
        raise ValueError(f"gradient fidelity needs at least 2 samples, got {z.shape[0]}")
    estimate = _train_mode_gradient(aux, z, y, loss)
    truth = _train_mode_gradient(server, z, y, loss)
    cosine = F.cosine_similarity(estimate.flatten(1), truth.flatten(1), dim=1, eps=1e-12).mean()
    # The floor keeps a vanishing true gradient from dividing by zero.
    relative_error = (estimate - truth).norm() / truth.norm().clamp_min(1e-12)
    return Fidelity(float(cosine), float(relative_error), int(z.shape[0]))


def _train_mode_gradient(head: nn.Module, z: torch.Tensor, y: torch.Tensor, loss: SplitLoss) -> torch.Tensor:
    """``d/dz`` of the batch-mean loss in train mode; restores the mode, buffers and grads."""
    was_training = head.training
    with preserved_buffers(head):
        head.train()
        try:
            # autograd.grad w.r.t. z only: the parameters' .grad stay untouched.
            return input_gradient(head, z, y, loss=loss).detach()
        finally:
            head.train(was_training)
