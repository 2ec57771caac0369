"""Derivation of reproducible seeds from a run seed and counters, for every module."""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np

SeedScheme = Literal["digest", "seed-sequence"]

SEED_SCHEMES: tuple[SeedScheme, ...] = ("digest", "seed-sequence")


def derive_seed(*parts: int | str, scheme: SeedScheme = "digest") -> int:
    """Return a stable seed derived from ``parts`` (seed, round, partition, ...).

    Python's ``hash`` is salted per process, so both schemes use a fixed mixing
    function and give equal seeds across the server, the clients and separate runs.

    Parameters
    ----------
    *parts : int or str
        What the seed is derived from, most significant first.
    scheme : {"digest", "seed-sequence"}
        ``"digest"`` (training, alignment, initialisation): the first 8 bytes of the
        SHA-256 of the parts joined with ``/``, shifted to 63 bits. ``"seed-sequence"``
        (Dirichlet redraws in :mod:`fsl_sage_flwr.data.partitioning`): the first 32-bit
        word of ``numpy.random.SeedSequence(parts)``; the parts must be non-negative
        integers. Each caller keeps the scheme its seeds were first drawn with, so
        existing runs and partitions stay reproducible.

    Returns
    -------
    int
        A non-negative seed: below ``2**63`` for ``"digest"``, below ``2**32`` for
        ``"seed-sequence"``.

    Raises
    ------
    ValueError
        If ``scheme`` is unknown, or ``"seed-sequence"`` gets a part that is not a
        non-negative integer.
    """
    if scheme == "digest":
        text = "/".join(str(p) for p in parts).encode()
        return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") >> 1
    if scheme == "seed-sequence":
        if not all(_is_non_negative_int(p) for p in parts):
            raise ValueError(f"the seed-sequence scheme needs non-negative ints, got {parts}")
        return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])
    raise ValueError(f"unknown seed scheme {scheme!r}; choose one of {', '.join(SEED_SCHEMES)}")


def _is_non_negative_int(part: int | str) -> bool:
    """Whether ``part`` is an int (not a bool) that NumPy's SeedSequence accepts."""
    return isinstance(part, int | np.integer) and not isinstance(part, bool) and part >= 0
