"""Choosing the auxiliary model's size: gradient fidelity after alignment against the memory it takes."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fsl_sage_flwr.core.alignment import align_auxiliary
from fsl_sage_flwr.core.fidelity import gradient_fidelity
from fsl_sage_flwr.core.memory import state_nbytes
from fsl_sage_flwr.core.training import make_adam


@dataclass(frozen=True)
class AuxCandidate:
    """One auxiliary model measured: its size, and how well it estimates after alignment.

    Attributes
    ----------
    variant : str
        The aux variant's name (e.g. ``linear``, ``half``, ``default``, ``full``).
    parameters : int
        Trainable parameters.
    client_bytes : int
        What a client holds for it: parameters and buffers (the client never trains it).
    server_bytes : int
        What the server holds per client for it: parameters, buffers and Adam's two moments.
    cosine : float
        Gradient cosine with the server model on held-out samples, after alignment.
    relative_error : float
        Relative error of the estimated gradient on the same samples.
    seconds : float
        Seconds its alignment took.
    """

    variant: str
    parameters: int
    client_bytes: int
    server_bytes: int
    cosine: float
    relative_error: float
    seconds: float


@dataclass(frozen=True)
class AuxChoice:
    """The variant chosen and every candidate's figures."""

    variant: str
    candidates: tuple[AuxCandidate, ...]
    tolerance: float
    memory_budget_bytes: int | None

    def table(self) -> str:
        """The candidates as a Markdown table, the chosen one marked."""
        lines = [
            "| aux | parameters | client KiB | server KiB per client | cosine | relative error | s | |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in self.candidates:
            mark = "chosen" if c.variant == self.variant else ""
            lines.append(
                f"| {c.variant} | {c.parameters:,} | {c.client_bytes / 1024:.1f} | {c.server_bytes / 1024:.1f} "
                f"| {c.cosine:.3f} | {c.relative_error:.3f} | {c.seconds:.1f} | {mark} |"
            )
        return "\n".join(lines)


def choose_aux_variant(
    build_aux: Callable[[str], nn.Module],
    variants: Sequence[str],
    server: nn.Module,
    z: torch.Tensor,
    y: torch.Tensor,
    *,
    memory_budget_bytes: int | None = None,
    tolerance: float = 0.02,
    epochs: int = 30,
    batch_size: int = 1000,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    holdout: float = 0.25,
    seed: int = 0,
) -> AuxChoice:
    """Pick the smallest auxiliary model that estimates the server's gradient about as well as the best.

    The paper (Nair et al., ICML 2025) leaves the aux size to the user; this makes
    the trade-off measurable. Each variant is built fresh (same seed), aligned to
    ``server`` on the first ``1 - holdout`` of the samples exactly as FSL-SAGE's
    server aligns (:func:`~fsl_sage_flwr.core.alignment.align_auxiliary`), and its
    gradient cosine is measured on the held-out rest. Among the variants whose
    client-held bytes fit ``memory_budget_bytes``, the choice is the one of fewest
    bytes whose cosine is within ``tolerance`` of the best cosine among them.

    Parameters
    ----------
    build_aux : Callable[[str], nn.Module]
        Builds a fresh aux model of the named variant.
    variants : Sequence[str]
        The variants to try.
    server : nn.Module
        The server-side model whose gradients the aux should match (left unchanged).
    z, y : torch.Tensor
        Cut-layer activations and their labels, such as a client's uploads.
    memory_budget_bytes : int, optional
        Most bytes a client may hold for its aux; no limit when None.
    tolerance : float
        How far under the best cosine the chosen variant may be.
    epochs, batch_size, lr, weight_decay : int, int, float, float
        The alignment's settings (``align-epochs``, ``align-batch-size``, ...).
    holdout : float
        Share of the samples kept for measuring, in (0, 1).
    seed : int
        Seeds each variant's initialisation and minibatch order.

    Raises
    ------
    ValueError
        For no variants, fewer than two samples on either side of the split, or
        when no variant fits the budget.
    """
    if not variants:
        raise ValueError("no aux variants to choose from")
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    n_fit = z.shape[0] - math.ceil(z.shape[0] * holdout)
    if n_fit < 2 or z.shape[0] - n_fit < 2:
        raise ValueError(f"{z.shape[0]} samples leave fewer than 2 for aligning or for measuring")

    def measure(variant: str) -> AuxCandidate:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            aux = build_aux(variant).to(z.device)
        started = time.perf_counter()
        align_auxiliary(
            aux,
            make_adam(aux, lr, weight_decay),
            server,
            z[:n_fit],
            y[:n_fit],
            epochs=epochs,
            batch_size=batch_size,
            generator=torch.Generator().manual_seed(seed),
        )
        seconds = time.perf_counter() - started
        fidelity = gradient_fidelity(aux, server, z[n_fit:], y[n_fit:])
        return _candidate(variant, aux, fidelity.cosine, fidelity.relative_error, seconds)

    candidates = tuple(measure(variant) for variant in variants)
    fitting = [c for c in candidates if memory_budget_bytes is None or c.client_bytes <= memory_budget_bytes]
    if not fitting:
        smallest = min(candidates, key=lambda c: c.client_bytes)
        raise ValueError(
            f"no aux variant fits {memory_budget_bytes} bytes; the smallest, {smallest.variant!r}, "
            f"takes {smallest.client_bytes}"
        )
    best = max(c.cosine for c in fitting)
    good = [c for c in fitting if c.cosine >= best - tolerance]
    chosen = min(good, key=lambda c: (c.client_bytes, -c.cosine))
    return AuxChoice(chosen.variant, candidates, tolerance, memory_budget_bytes)


def _candidate(variant: str, aux: nn.Module, cosine: float, relative_error: float, seconds: float) -> AuxCandidate:
    client_bytes = state_nbytes(aux)
    parameter_bytes = sum(p.nbytes for p in aux.parameters())
    return AuxCandidate(
        variant=variant,
        parameters=sum(p.numel() for p in aux.parameters()),
        client_bytes=client_bytes,
        server_bytes=client_bytes + 2 * parameter_bytes,  # Adam keeps two moments per parameter
        cosine=cosine,
        relative_error=relative_error,
        seconds=seconds,
    )
