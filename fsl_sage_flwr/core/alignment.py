"""Auxiliary-model alignment: fit its input gradients to the server's."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fsl_sage_flwr.core.estimation import input_gradient, preserved_buffers
from fsl_sage_flwr.core.losses import CROSS_ENTROPY, SplitLoss
from fsl_sage_flwr.core.settings import (
    check_types,
    require,
    require_at_least,
    require_non_negative,
    require_positive,
    setting,
)


@dataclass(frozen=True)
class AlignmentSettings:
    """Auxiliary alignment of FSL-SAGE (Nair et al., ICML 2025, Alg. 1), checked when built.

    The app's defaults (``RunSettings`` takes them): the paper's, but for the
    small digits set l = 5 (paper: 10) and 30 epochs (paper: 100). Each field
    names its run-config key; a bad value raises ``ValueError`` naming it.
    """

    interval: int = setting("align-interval", 5, "l: align auxiliary models every l rounds")
    buffer_size: int = setting("buffer-size", 1000, "per-client (z, y) buffer cap in samples")
    epochs: int = setting("align-epochs", 30, "alignment passes over a buffer (0: send the aux unaligned)")
    batch_size: int = setting("align-batch-size", 1000, "alignment minibatch size")
    lr: float = setting("align-lr", 1e-3, "Adam learning rate of the alignment")
    weight_decay: float = setting("weight-decay", 1e-4, "Adam weight decay")
    seed: int = setting("seed", 0, "seed of data split, models, batches and sampling")
    patience: int = setting(
        "align-patience", 0, "stop an alignment after this many epochs without gain; 0 = all epochs (the paper)"
    )
    min_improvement: float = setting(
        "align-min-improvement", 0.01, "relative drop of an epoch's matching loss that counts as a gain"
    )
    stacked: bool = setting("align-stacked", False, "align all due auxiliary models at once (vmapped); same result")
    threshold: float = setting(
        "align-threshold",
        0.0,
        "FSL-SAGE: also align, in any round, a client whose measured gradient cosine falls under this; 0 = off",
    )
    budget_bytes: int = setting(
        "align-budget-bytes",
        0,
        "FSL-SAGE: aux bytes the threshold-triggered alignments may send in a run; 0 = no limit",
    )

    def __post_init__(self) -> None:
        check_types(self)
        require_at_least(self, 1, "interval", "buffer_size", "batch_size")
        require_at_least(self, 0, "epochs", "seed", "patience", "budget_bytes")
        require_positive(self, "lr")
        require_non_negative(self, "weight_decay")
        require(0.0 <= self.min_improvement < 1.0, self, "min_improvement", "in [0, 1)")
        # A cosine under 0 cannot trigger anything that 0 (off) would not: the range is [0, 1].
        require(0.0 <= self.threshold <= 1.0, self, "threshold", "a cosine in [0, 1]")


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
    server: nn.Module, z: torch.Tensor, y: torch.Tensor, batch_size: int, loss: SplitLoss = CROSS_ENTROPY
) -> torch.Tensor:
    """Return the alignment targets ``G = d/dZ sum_n L(s(Z_n), Y_n)`` (``L``: the split's loss).

    Per-sample (sum-reduced) gradients, computed in train mode like the server's
    own training passes, in chunks of ``batch_size`` (the alignment minibatch).
    The server's BatchNorm running statistics are left as they were: buffered
    activations are stale and must not move them (Nair et al., ICML 2025, Alg. 1).
    """
    targets = []
    with preserved_buffers(server):
        server.train()
        for chunk in chunks(z.shape[0], batch_size):
            targets.append(input_gradient(server, z[chunk], y[chunk], reduction="sum", loss=loss))
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
    aux: nn.Module, z: torch.Tensor, y: torch.Tensor, target: torch.Tensor, loss: SplitLoss = CROSS_ENTROPY
) -> torch.Tensor:
    """Return ``sum (d/dz sum_n L(a(z_n), y_n) - target)^2`` with a live graph."""
    z = z.detach().requires_grad_(True)
    estimate = input_gradient(aux, z, y, reduction="sum", create_graph=True, loss=loss)
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
    loss_fn: SplitLoss = CROSS_ENTROPY,
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
    loss_fn : SplitLoss
        The split's loss, whose input gradients are matched (cross-entropy by default).

    Returns
    -------
    AlignmentReport
        Matching loss and cosine similarity on the whole buffer before and after,
        the epochs run and the seconds taken.
    """
    started = time.perf_counter()
    target = server_cut_gradients(server, z, y, batch_size, loss_fn)
    before = _evaluate_match(aux, z, y, target, batch_size, loss_fn)
    aux.train()
    stop = _EarlyStop(patience, min_improvement)
    epochs_run = 0
    for _ in range(epochs):
        order = torch.randperm(z.shape[0], generator=generator).to(z.device)
        epoch_loss = torch.zeros((), device=z.device)
        for chunk in chunks(z.shape[0], batch_size):
            idx = order[chunk]
            optimizer.zero_grad(set_to_none=True)
            loss = gradient_matching_loss(aux, z[idx], y[idx], target[idx], loss_fn)
            loss.backward()
            optimizer.step()
            epoch_loss += loss.detach()
        epochs_run += 1
        if stop.after_epoch(epoch_loss):
            break
    after = _evaluate_match(aux, z, y, target, batch_size, loss_fn)
    return AlignmentReport(
        before[0], after[0], before[1], after[1], int(z.shape[0]), epochs_run, time.perf_counter() - started
    )


def _evaluate_match(
    aux: nn.Module,
    z: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor,
    batch_size: int,
    loss: SplitLoss,
) -> tuple[float, float]:
    """Matching loss and mean cosine similarity, without touching aux's state."""
    with preserved_buffers(aux):
        aux.train()
        estimate = torch.cat(
            [
                input_gradient(aux, z[chunk], y[chunk], reduction="sum", loss=loss)
                for chunk in chunks(z.shape[0], batch_size)
            ]
        )
    loss = float((estimate - target).pow(2).sum())
    cosine = F.cosine_similarity(estimate.flatten(1), target.flatten(1), dim=1, eps=1e-12)
    return loss, float(cosine.mean())


def align_auxiliaries_stacked(
    auxes: list[nn.Module],
    optimizers: list[torch.optim.Optimizer],
    server: nn.Module,
    buffers: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int,
    batch_size: int,
    generators: list[torch.Generator | None],
    patience: int = 0,
    min_improvement: float = 0.01,
    loss_fn: SplitLoss = CROSS_ENTROPY,
) -> list[AlignmentReport]:
    """Align several clients' auxiliary models at once, one vmapped pass per step.

    Computes the same per-client updates as :func:`align_auxiliary` called client
    after client (Nair et al., ICML 2025, Eq. 6): clients whose buffers have the
    same length are stacked (``torch.func.stack_module_state`` style) and their
    double-backprop gradients come from one ``vmap`` over ``grad(grad(.))``.
    Each client keeps its own optimizer (its own Adam moments), its own
    BatchNorm buffers, minibatch order and early stop. Clients with different
    buffer lengths fall into separate groups. A report's ``seconds`` is its
    group's time shared evenly among the group's clients.

    Parameters
    ----------
    auxes, optimizers : list
        The clients' auxiliary models (same architecture) and their optimizers.
    server : nn.Module
        The current server-side model (not modified).
    buffers : list of (torch.Tensor, torch.Tensor)
        Each client's buffered activations and labels.
    epochs, batch_size, patience, min_improvement, loss_fn
        As in :func:`align_auxiliary`.
    generators : list of torch.Generator or None
        Each client's minibatch-order generator.

    Returns
    -------
    list of AlignmentReport
        One per client, in the order given.
    """
    if not len(auxes) == len(optimizers) == len(buffers) == len(generators):
        raise ValueError("auxes, optimizers, buffers and generators must have the same length")
    groups: dict[int, list[int]] = {}
    for i, (z, _) in enumerate(buffers):
        groups.setdefault(int(z.shape[0]), []).append(i)
    reports: list[AlignmentReport | None] = [None] * len(auxes)
    for members in groups.values():
        group_reports = _align_group(
            [auxes[i] for i in members],
            [optimizers[i] for i in members],
            server,
            [buffers[i] for i in members],
            epochs=epochs,
            batch_size=batch_size,
            generators=[generators[i] for i in members],
            patience=patience,
            min_improvement=min_improvement,
            loss_fn=loss_fn,
        )
        for i, report in zip(members, group_reports):
            reports[i] = report
    return [r for r in reports if r is not None]


def _stacked_matching_step(template: nn.Module, loss_fn: SplitLoss):
    """``vmap``-ed ``(params, buffers, z, y, target) -> (grads, loss)`` of the matching loss."""

    def matching_loss(params, buffers, z, y, target):
        # BatchNorm updates its running statistics in place: they must be an input
        # of every transformed function, never a captured tensor.
        def summed_loss(z_in, buffers_in):
            outputs = torch.func.functional_call(template, (params, buffers_in), (z_in,))
            return loss_fn(outputs, y, reduction="sum")

        estimate = torch.func.grad(summed_loss)(z, buffers)
        loss = (estimate - target).pow(2).sum()
        return loss, loss.detach()

    return torch.vmap(torch.func.grad(matching_loss, has_aux=True))


def _align_group(
    auxes: list[nn.Module],
    optimizers: list[torch.optim.Optimizer],
    server: nn.Module,
    buffers: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    epochs: int,
    batch_size: int,
    generators: list[torch.Generator | None],
    patience: int,
    min_improvement: float,
    loss_fn: SplitLoss,
) -> list[AlignmentReport]:
    """Stacked alignment of clients whose buffers have one length."""
    started = time.perf_counter()
    n = int(buffers[0][0].shape[0])
    device = buffers[0][0].device
    targets = [server_cut_gradients(server, z, y, batch_size, loss_fn) for z, y in buffers]
    before = [_evaluate_match(a, z, y, t, batch_size, loss_fn) for a, (z, y), t in zip(auxes, buffers, targets)]
    # A stateless copy that only lends its structure to functional_call.
    template = copy.deepcopy(auxes[0]).to("meta")
    template.train()
    step = _stacked_matching_step(template, loss_fn)
    for aux in auxes:
        aux.train()
    stops = [_EarlyStop(patience, min_improvement) for _ in auxes]
    epochs_run = [0] * len(auxes)
    active = list(range(len(auxes)))
    for _ in range(epochs):
        if not active:
            break
        orders = [torch.randperm(n, generator=generators[i]).to(device) for i in active]
        epoch_loss = torch.zeros(len(active), device=device)
        for chunk in chunks(n, batch_size):
            idx = [order[chunk] for order in orders]
            params = _stack([dict(auxes[i].named_parameters()) for i in active])
            stacked_buffers = _stack([dict(auxes[i].named_buffers()) for i in active])
            z = torch.stack([buffers[i][0][j] for i, j in zip(active, idx)])
            y = torch.stack([buffers[i][1][j] for i, j in zip(active, idx)])
            target = torch.stack([targets[i][j] for i, j in zip(active, idx)])
            grads, losses = step(params, stacked_buffers, z, y, target)
            for k, i in enumerate(active):
                with torch.no_grad():
                    # BatchNorm running statistics moved in the stacked copy.
                    for name, buf in auxes[i].named_buffers():
                        buf.copy_(stacked_buffers[name][k])
                optimizers[i].zero_grad(set_to_none=True)
                for name, param in auxes[i].named_parameters():
                    param.grad = grads[name][k].detach().clone()
                optimizers[i].step()
            epoch_loss += losses.detach()
        still_active = []
        for k, i in enumerate(active):
            epochs_run[i] += 1
            if not stops[i].after_epoch(epoch_loss[k]):
                still_active.append(i)
        active = still_active
    after = [_evaluate_match(a, z, y, t, batch_size, loss_fn) for a, (z, y), t in zip(auxes, buffers, targets)]
    seconds = (time.perf_counter() - started) / len(auxes)
    return [AlignmentReport(b[0], a[0], b[1], a[1], n, e, seconds) for b, a, e in zip(before, after, epochs_run)]


class _EarlyStop:
    """The early-stop rule of an alignment: ``patience`` epochs in a row without a relative
    gain of ``min_improvement`` below the best summed matching loss so far; 0 never stops."""

    def __init__(self, patience: int, min_improvement: float) -> None:
        self.patience = patience
        self.min_improvement = min_improvement
        self.best = math.inf
        self.stale = 0

    def after_epoch(self, epoch_loss: torch.Tensor) -> bool:
        """Record an epoch's summed loss; return whether the alignment should stop."""
        if not self.patience:
            return False
        # One host sync per epoch, and only when stopping early is asked for.
        value = float(epoch_loss)
        if value < self.best * (1.0 - self.min_improvement):
            self.best, self.stale = value, 0
            return False
        self.stale += 1
        return self.stale >= self.patience


def _stack(named: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack each named tensor across clients into a fresh, detached tensor."""
    return {name: torch.stack([d[name].detach() for d in named]) for name in named[0]}
