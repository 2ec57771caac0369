"""A checkpoint is checked as a reply is before a resumed run restores anything from it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from fsl_sage_flwr.app.results import RunFolderError


def check_resume_state(checkpoint: dict[str, Any], name: str) -> None:
    """Refuse a checkpoint whose state a run could not have written, naming the first fault.

    Every floating tensor of the global arrays and of the server's state (its
    model, optimizer, per-client state) must be finite; the results rows must
    be rounds ``0..N`` in order, ``N`` the checkpoint's round; no partition may
    appear twice among the client slots.

    Parameters
    ----------
    checkpoint : dict
        The loaded checkpoint.
    name : str
        How errors name it (its path).

    Raises
    ------
    RunFolderError
        At the first fault found.
    """
    for section in ("arrays", "server"):
        for key, tensor in _tensors(checkpoint[section], section):
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise RunFolderError(f"resume: {name} holds non-finite values in {key}")
    _check_rows(checkpoint["rows"], int(checkpoint["round"]), name)
    _check_slots(checkpoint["server"].get("slots", []), name)


def _tensors(value: Any, key: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor inside nested dicts and lists, with a dotted key naming where it is."""
    if isinstance(value, torch.Tensor):
        yield key, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _tensors(v, f"{key}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _tensors(v, f"{key}[{i}]")


def _check_rows(rows: list[dict[str, Any]], last_round: int, name: str) -> None:
    rounds = [row.get("round") for row in rows]
    expected = list(range(last_round + 1))
    if rounds != expected:
        raise RunFolderError(
            f"resume: the results rows of {name} are rounds {rounds}, expected 0..{last_round} in order"
        )


def _check_slots(slots: list[list[int | bool]], name: str) -> None:
    seen: set[int] = set()
    for _, partition_id, *_ in slots:
        if int(partition_id) in seen:
            raise RunFolderError(f"resume: partition {partition_id} holds two client slots in {name}")
        seen.add(int(partition_id))
