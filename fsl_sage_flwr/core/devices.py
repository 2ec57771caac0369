"""Which torch device a run's models live on, from the run-config key ``device``."""

from __future__ import annotations

import re

import torch

DEVICE_CHOICES = "auto, cpu, cuda, cuda:N"


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
