"""Client-level differential privacy for the client-model average: fixed clipping and Gaussian noise.

Flower's ``DifferentialPrivacyServerSideFixedClipping`` and
``DifferentialPrivacyClientSideFixedClipping`` cannot wrap the split strategies
(the reasons, measured, are in ``docs/privacy.md``): they clip every array record of
a reply, uploads included, and their inherited ``start`` bypasses the split
strategies' own. This is the same mechanism, DP-FedAvg (McMahan et al., ICLR 2018)
as Flower implements it, applied where a split strategy averages client models:
each accepted update (reply minus the global arrays sent) is clipped to an L2 norm
as Flower's ``compute_clip_model_update`` clips it (which fails on an update of norm
0, a client that did not move), the clipped models are averaged with
equal weights, and Gaussian noise of standard deviation ``noise_multiplier *
clipping_norm / n`` (Flower's ``compute_stdv``) is added to every float array.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord
from flwr.supercore.differential_privacy import compute_stdv

from fsl_sage_flwr.core.seeds import derive_seed
from fsl_sage_flwr.extras import import_extra
from fsl_sage_flwr.strategies.averaging import restore_dtype, weighted_average
from fsl_sage_flwr.transport.arrays import ArraySpec, to_array


@dataclass(frozen=True)
class ModelPrivacy:
    """Settings of the client-model average's differential privacy; they check themselves when built.

    Parameters
    ----------
    noise_multiplier : float
        Noise standard deviation over the clipping norm (> 0).
    clipping_norm : float
        L2 bound of each client's update over all its float arrays (> 0).
    delta : float
        The delta the reported epsilon holds for, in (0, 1).
    seed : int
        Seeds the noise of each round (with the round number), so a run repeats.
    """

    noise_multiplier: float
    clipping_norm: float
    delta: float = 1e-5
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("noise_multiplier", "clipping_norm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"ModelPrivacy.{name} must be a positive number, got {value!r}")
        if not 0 < self.delta < 1:
            raise ValueError(f"ModelPrivacy.delta must lie in (0, 1), got {self.delta!r}")

    def average(
        self,
        sent: ArrayRecord,
        states: list[tuple[ArrayRecord, int]],
        spec: Mapping[str, ArraySpec],
        server_round: int,
    ) -> ArrayRecord:
        """Clip each update from ``sent``, average with equal weights, add the round's noise.

        Integer arrays (BatchNorm counters) carry no gradient: they are averaged as
        without privacy and get no noise.
        """
        floats = [name for name, entry in spec.items() if np.dtype(entry.dtype).kind == "f"]
        base = [sent[name].numpy().astype(np.float64) for name in floats]
        clipped_sum = [np.zeros_like(b) for b in base]
        for arrays, _ in states:
            update = [arrays[name].numpy().astype(np.float64) - b for name, b in zip(floats, base, strict=True)]
            scale = _clip_scale(update, self.clipping_norm)
            clipped_sum = [total + b + scale * u for total, b, u in zip(clipped_sum, base, update, strict=True)]
        stdv = compute_stdv(self.noise_multiplier, self.clipping_norm, len(states))
        rng = np.random.default_rng(derive_seed(self.seed, server_round, "model-privacy"))
        noisy = {
            name: total / len(states) + rng.normal(0.0, stdv, total.shape)
            for name, total in zip(floats, clipped_sum, strict=True)
        }
        plain = weighted_average(states, spec)
        return ArrayRecord(
            {
                name: to_array(restore_dtype(noisy[name], entry.dtype)) if name in noisy else plain[name]
                for name, entry in spec.items()
            }
        )

    def epsilon(self, releases: int) -> float:
        """Client-level epsilon at ``delta`` after ``releases`` noisy averages (Opacus's RDP analysis).

        Counted without sampling amplification, as Flower's fixed-clipping
        accounting does: a round's sampled clients are not a secret draw.
        """
        if releases <= 0:
            return 0.0
        accountants = import_extra("opacus.accountants", "privacy", "client-model differential privacy")
        accountant = accountants.RDPAccountant()
        # One history entry stands for ``releases`` identical steps of the Gaussian mechanism.
        accountant.history = [(self.noise_multiplier, 1.0, releases)]
        return float(accountant.get_epsilon(self.delta))


def _clip_scale(update: list[np.ndarray], clipping_norm: float) -> float:
    """The factor that brings ``update``'s L2 norm (over all arrays) down to ``clipping_norm``, at most 1."""
    norm = math.sqrt(sum(float(np.sum(u * u)) for u in update))
    return min(1.0, clipping_norm / norm) if norm > 0 else 1.0
