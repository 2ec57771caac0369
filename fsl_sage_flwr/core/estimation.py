"""Cut-layer gradient estimation with the auxiliary model, and the client step."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from fsl_sage_flwr.core.losses import CROSS_ENTROPY, SplitLoss
from fsl_sage_flwr.core.memory import PeakMemoryMeter


@contextmanager
def preserved_buffers(module: nn.Module) -> Iterator[None]:
    """Restore every buffer of ``module`` (BatchNorm statistics) on exit.

    FSL-SAGE computes gradients in train mode (batch statistics) but must not let
    those passes move running statistics: stale activations would corrupt the
    server's, and the client must not train its auxiliary model at all.
    """
    saved = {name: buf.detach().clone() for name, buf in module.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buf in module.named_buffers():
                buf.copy_(saved[name])


def input_gradient(
    head: nn.Module,
    z: torch.Tensor,
    y: torch.Tensor,
    *,
    reduction: str = "mean",
    create_graph: bool = False,
    loss: SplitLoss = CROSS_ENTROPY,
) -> torch.Tensor:
    """Return ``d/dz L(head(z), y)`` for the split's loss ``L`` (cross-entropy by default).

    Parameters
    ----------
    head : nn.Module
        The auxiliary or the server-side model, mapping ``z`` to logits.
    z : torch.Tensor
        Cut-layer activations.
    y : torch.Tensor
        Labels.
    reduction : str
        ``"mean"`` (the client's batch-mean convention) or ``"sum"`` (per-sample
        gradients, independent of the batch size, used for alignment targets).
    create_graph : bool
        Keep the graph for a second backward pass (alignment's double backprop).
    loss : SplitLoss
        The split's loss.

    Returns
    -------
    torch.Tensor
        Gradient with the shape of ``z``.
    """
    if not create_graph:
        z = z.detach()
    if not z.requires_grad:
        z = z.requires_grad_(True)
    value = loss(head(z), y, reduction=reduction)
    (grad,) = torch.autograd.grad(value, z, create_graph=create_graph)
    return grad


def estimate_cut_gradient(
    aux: nn.Module, z: torch.Tensor, y: torch.Tensor, loss: SplitLoss = CROSS_ENTROPY
) -> torch.Tensor:
    """Estimate the server's cut-layer gradient with the auxiliary model.

    Implements ``g_hat(z) = d/dz L(a(z; x_a), y)`` with the batch-mean loss (Nair
    et al., ICML 2025, Eq. 4). The auxiliary model stays untouched: no parameter
    gradient is kept and its BatchNorm statistics are restored.
    """
    requires = [p.requires_grad for p in aux.parameters()]
    for p in aux.parameters():
        p.requires_grad_(False)
    try:
        with preserved_buffers(aux):
            aux.train()
            return input_gradient(aux, z, y, reduction="mean", loss=loss)
    finally:
        for p, flag in zip(aux.parameters(), requires):
            p.requires_grad_(flag)


def client_step(
    client: nn.Module,
    aux: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    meter: PeakMemoryMeter | None = None,
    loss: SplitLoss = CROSS_ENTROPY,
) -> torch.Tensor:
    """Run one FSL-SAGE client step and return the detached activations ``z``.

    The client forward pass gives ``z``; the auxiliary model's input gradient
    stands in for the server's, and is backpropagated through the client model
    only. No second-order graph is built here.
    """
    client.train()
    optimizer.zero_grad(set_to_none=True)
    with meter.recording() if meter else nullcontext():
        z = client(x)
        grad = estimate_cut_gradient(aux, z, y, loss)
    return _finish_step(z, grad, optimizer, meter)


def supervised_step(
    model: nn.Module,
    head: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    meter: PeakMemoryMeter | None = None,
    loss: SplitLoss = CROSS_ENTROPY,
) -> torch.Tensor:
    """One supervised step of ``head(model(x))`` on the split's loss; return ``model(x)``.

    With a head this is the CSE-FSL client step (client model plus its local
    auxiliary classifier, Mu and Shen); without one, ``model`` is a full model
    (the FedAvg baseline).
    """
    model.train()
    if head is not None:
        head.train()
    optimizer.zero_grad(set_to_none=True)
    with meter.recording() if meter else nullcontext():
        z = model(x)
        value = loss(head(z) if head is not None else z, y)
    return _finish_step(z, value, optimizer, meter)


def apply_cut_gradient(
    client: nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    grad: torch.Tensor,
    meter: PeakMemoryMeter | None = None,
) -> None:
    """Backpropagate a cut-layer gradient that arrived after its forward pass.

    An autograd graph cannot outlive a message, so the forward pass of ``x`` is
    recomputed (the weights have not changed since); BatchNorm statistics are
    restored afterwards, so they move once per batch, in the first forward pass.
    """
    client.train()
    optimizer.zero_grad(set_to_none=True)
    with preserved_buffers(client), meter.recording() if meter else nullcontext():
        z = client(x)
    _finish_step(z, grad, optimizer, meter)


def _finish_step(
    z: torch.Tensor,
    grad_or_loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    meter: PeakMemoryMeter | None,
) -> torch.Tensor:
    """Backward (from a cut gradient or a scalar loss), step, and sample memory."""
    if meter:
        meter.sample(optimizer, with_activations=True)
    if grad_or_loss.dim() == 0:
        grad_or_loss.backward()
    else:
        z.backward(grad_or_loss)
    optimizer.step()
    if meter:
        meter.sample(optimizer, with_activations=False)
    return z.detach()


# Beyond this a squared gradient overflows float32 in Adam's second moment.
_GRAD_LIMIT = 1e18


class UnsafeStepError(ValueError):
    """A server step that was skipped because it would leave non-finite state; the reason is the message."""


def server_step(
    server: nn.Module,
    optimizer: torch.optim.Optimizer,
    z: torch.Tensor,
    y: torch.Tensor,
    loss_fn: SplitLoss = CROSS_ENTROPY,
) -> float:
    """Run one optimizer step of the server-side model on uploaded ``(z, y)`` under ``loss_fn``.

    The step is taken only when the loss, every parameter gradient (and, when
    ``z`` requires a gradient, ``z.grad``) and the BatchNorm statistics moved by
    the forward pass are finite, the gradients below 1e18 in magnitude.
    Otherwise the buffers are restored, the gradients cleared, and
    UnsafeStepError says why: the model and optimizer are as before the call.

    Returns
    -------
    float
        The batch-mean training loss before the step.

    Raises
    ------
    UnsafeStepError
        When the step was skipped.
    """
    server.train()
    optimizer.zero_grad(set_to_none=True)
    saved = {name: buf.detach().clone() for name, buf in server.named_buffers()}
    try:
        loss = loss_fn(server(z), y)
        if loss.dim() != 0:
            raise UnsafeStepError(f"loss has shape {tuple(loss.shape)}, expected a scalar")
        if not torch.isfinite(loss):
            raise UnsafeStepError(f"loss is {float(loss)}")
        loss.backward()
        _check_gradients(server, z)
        for name, buf in server.named_buffers():
            if buf.is_floating_point() and not torch.isfinite(buf).all():
                raise UnsafeStepError(f"buffer '{name}' became non-finite")
    except UnsafeStepError:
        optimizer.zero_grad(set_to_none=True)
        if z.grad is not None:
            z.grad = None
        with torch.no_grad():
            for name, buf in server.named_buffers():
                buf.copy_(saved[name])
        raise
    optimizer.step()
    return float(loss.detach())


def _check_gradients(server: nn.Module, z: torch.Tensor) -> None:
    named = [(name, p.grad) for name, p in server.named_parameters() if p.grad is not None]
    if z.requires_grad and z.grad is not None:
        named.append(("cut-layer input", z.grad))
    for name, grad in named:
        peak = float(grad.detach().abs().max()) if grad.numel() else 0.0
        if not peak <= _GRAD_LIMIT:  # also catches NaN
            raise UnsafeStepError(f"gradient of '{name}' reaches {peak:.3g}")
