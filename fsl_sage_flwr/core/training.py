"""Small training utilities shared by every algorithm: batching, seeding, evaluation."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import nn

from fsl_sage_flwr.core.losses import ACCURACY, CROSS_ENTROPY, evaluate_model

# Re-exported: the training code and its callers have always imported it from here.
from fsl_sage_flwr.core.seeds import derive_seed as derive_seed


def minibatches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield shuffled minibatches, skipping a last batch of one sample.

    BatchNorm in train mode cannot normalise a single sample, so a trailing batch
    of size one is dropped.
    """
    # The order comes from a CPU generator, the same on every device.
    order = torch.randperm(x.shape[0], generator=generator).to(x.device)
    for start in range(0, x.shape[0], batch_size):
        idx = order[start : start + batch_size]
        if idx.shape[0] < 2:
            continue
        yield x[idx], y[idx]


def run_local_epochs(
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    upload_interval: int | None,
) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """Run ``epochs`` of ``step`` over minibatches; keep ``(z, y)`` every q-th step.

    The step counter runs across epochs and step k is kept when ``k mod q == 0``
    (Nair et al., ICML 2025, Alg. 1). ``upload_interval=None`` keeps nothing.

    Returns
    -------
    tuple
        The kept ``(z, y)`` batches in step order, and the number of steps.
    """
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    steps = 0
    for _ in range(epochs):
        for xb, yb in minibatches(x, y, batch_size, generator):
            z = step(xb, yb)
            if upload_interval is not None and steps % upload_interval == 0:
                kept.append((z, yb))
            steps += 1
    return kept, steps


def make_adam(module: nn.Module, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Return the paper's optimizer: Adam with weight decay (Nair et al., ICML 2025)."""
    return torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)


def evaluate_classifier(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512
) -> tuple[float, float]:
    """Return ``(mean cross-entropy loss, accuracy)`` of ``model`` in eval mode."""
    metrics = evaluate_model(model, x, y, CROSS_ENTROPY, ACCURACY, batch_size)
    return metrics["loss"], metrics["accuracy"]
