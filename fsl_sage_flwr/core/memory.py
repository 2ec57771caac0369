"""Measure the bytes models take: their state, and the peak a client holds while it trains."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn


def state_nbytes(module: nn.Module) -> int:
    """Bytes of ``module``'s state dict (parameters and buffers): what storing or sending it costs."""
    return sum(t.nbytes for t in module.state_dict().values())


def optimizer_nbytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of ``optimizer``'s per-parameter state (Adam's moments, step counters)."""
    return sum(v.nbytes for slots in optimizer.state.values() for v in slots.values() if isinstance(v, torch.Tensor))


class PeakMemoryMeter:
    """Track the peak of parameters + gradients + optimizer state + saved activations.

    Activations are measured, not estimated: a ``saved_tensors_hooks`` context
    sees every tensor autograd keeps for the backward pass of a step, and the
    meter counts the distinct ones that are not parameters. It samples twice per
    step: after the forward pass (activations held, gradients not yet) and after
    the backward pass (gradients held, activations freed).

    Parameters
    ----------
    modules : Sequence[nn.Module]
        The models the client holds (e.g. client model and auxiliary model).
    """

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)
        self.peak_bytes = 0
        self._saved: dict[tuple[int, int], int] = {}

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Count tensors saved for backward inside this block (the forward pass)."""
        self._saved = {}
        param_ptrs = {p.data_ptr() for m in self.modules for p in m.parameters()}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            if tensor.data_ptr() not in param_ptrs:
                key = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
                self._saved[key] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            yield

    @property
    def saved_bytes(self) -> int:
        """Bytes of the activations the last recorded forward pass kept for backward."""
        return sum(self._saved.values())

    def sample(self, optimizer: torch.optim.Optimizer | None, *, with_activations: bool) -> int:
        """Update the peak with what is held now; return the current total."""
        total = sum(self._tensor_bytes(m) for m in self.modules)
        if optimizer is not None:
            total += optimizer_nbytes(optimizer)
        if with_activations:
            total += self.saved_bytes
        self.peak_bytes = max(self.peak_bytes, total)
        return total

    @staticmethod
    def _tensor_bytes(module: nn.Module) -> int:
        params = sum(p.nbytes for p in module.parameters())
        grads = sum(p.grad.nbytes for p in module.parameters() if p.grad is not None)
        buffers = sum(b.nbytes for b in module.buffers())
        return params + grads + buffers
