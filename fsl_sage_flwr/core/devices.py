"""Where a run's models live (run-config key ``device``) and in which precision they train (``autocast``)."""

from __future__ import annotations

import re
from contextlib import AbstractContextManager, nullcontext

import torch

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N"

#: ``off`` trains in float32; ``bfloat16`` runs forward passes under torch's autocast.
#: float16 is not offered: its narrow range needs loss scaling, which a gradient that
#: crosses the cut (estimated by the aux, or sent by the server) would have to carry too.
AUTOCAST_CHOICES = ("off", "bfloat16")


def resolve_device(name: str) -> torch.device:
    """Turn ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` into a torch device.

    ``auto`` picks the first CUDA device when torch sees one, else the CPU.

    Raises
    ------
    ValueError
        For any other name, or a CUDA device this machine does not have.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise ValueError(f"device must be one of {DEVICE_CHOICES}, got {name!r}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(match.group(1) or 0)
    if index >= count:
        raise ValueError(f"device {name!r} asked for, but torch sees {count} CUDA device(s) here")
    return torch.device("cuda", index)


def autocast(device: torch.device | str, mode: str) -> AbstractContextManager[object]:
    """Return the context in which training forward passes run on ``device``.

    ``bfloat16`` is torch's automatic mixed precision: matrix products and
    convolutions in bfloat16, reductions and losses in float32, weights and
    optimizer state in float32. Its weight cache is off, since the models'
    weights change between the passes of one context (the alignment, which
    differentiates twice, always runs in float32).

    Raises
    ------
    ValueError
        For a mode outside :data:`AUTOCAST_CHOICES`.
    """
    if mode not in AUTOCAST_CHOICES:
        raise ValueError(f"autocast must be one of {list(AUTOCAST_CHOICES)}, got {mode!r}")
    if mode == "off":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, cache_enabled=False)
