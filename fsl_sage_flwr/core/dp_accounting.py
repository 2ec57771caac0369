"""Privacy spent by a node's uploads: releases per round and epsilon from Opacus's RDP accountant."""

from __future__ import annotations

import math
import warnings
from functools import lru_cache
from types import ModuleType

import numpy as np

from fsl_sage_flwr.extras import import_extra

#: What needs the accountant, for the message of a missing ``opacus``.
_FEATURE = "differential privacy for uploads (run config 'dp-clip')"


def opacus_module(name: str) -> ModuleType:
    """Import ``opacus.<name>``, or say that the extra ``privacy`` installs it."""
    return import_extra(f"opacus.{name}", "privacy", _FEATURE)


def upload_sample_rate(num_examples: int, batch_size: int) -> float:
    """The share of a node's samples one upload releases: one batch of B out of n, at most 1."""
    return min(1.0, batch_size / num_examples)


def releases_per_round(num_examples: int, batch_size: int, local_epochs: int, upload_interval: int) -> int:
    """Uploaded batches in one local round: every q-th of E * ceil(n / B) steps, the first included.

    A trailing batch of one sample is skipped by the minibatch loop; counting it
    anyway can only overstate what is spent.
    """
    steps = local_epochs * math.ceil(num_examples / batch_size)
    return math.ceil(steps / upload_interval)


@lru_cache(maxsize=256)
def _per_release_rdp(noise_multiplier: float, sample_rate: float) -> tuple[float, ...]:
    """RDP of one subsampled Gaussian release at the accountant's default orders (composition adds them)."""
    rdp = opacus_module("accountants.analysis.rdp")
    orders = opacus_module("accountants").RDPAccountant.DEFAULT_ALPHAS
    return tuple(rdp.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=orders))


def epsilon_spent(noise_multiplier: float, sample_rate: float, releases: int, delta: float) -> float:
    """Epsilon of ``releases`` Gaussian releases at ``sample_rate`` for ``delta``, by Opacus's RDP accountant.

    The same figure as ``RDPAccountant`` with history ``[(noise_multiplier,
    sample_rate, releases)]`` (Mironov, "Rényi Differential Privacy", 2017;
    subsampling as Poisson sampling at rate B / n). The per-release RDP is
    computed once per noise and rate and scaled by the count, so that the
    figure of every round costs no more than one conversion.
    """
    if releases == 0:
        return 0.0
    if noise_multiplier == 0:
        return math.inf
    analysis = opacus_module("accountants.analysis.rdp")
    orders = opacus_module("accountants").RDPAccountant.DEFAULT_ALPHAS
    rdp = np.asarray(_per_release_rdp(noise_multiplier, sample_rate)) * releases
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore", UserWarning
        )  # "optimal order is the largest alpha": a looser bound, still valid
        epsilon, _ = analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(epsilon)


@lru_cache(maxsize=256)
def noise_multiplier_for(target_epsilon: float, delta: float, sample_rate: float, releases: int) -> float:
    """The smallest noise multiplier whose ``releases`` stay within ``target_epsilon``, by Opacus's search."""
    utils = opacus_module("accountants.utils")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(
            utils.get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=releases,
                accountant="rdp",
            )
        )
