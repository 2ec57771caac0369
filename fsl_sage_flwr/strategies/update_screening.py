"""Screening a round's accepted replies by their client-model update, before any average."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import ArrayRecord

from fsl_sage_flwr.transport.replies import ParsedReply
from fsl_sage_flwr.transport.update_guard import Screening, UpdateGuard


def screen_updates(
    guard: UpdateGuard,
    sent: ArrayRecord,
    replies: list[ParsedReply],
    log_dropped: Callable[[int, str], None],
) -> tuple[list[ParsedReply], Screening]:
    """Keep the replies whose update passes ``guard``; log each other one with its reason.

    Parameters
    ----------
    guard : UpdateGuard
        The bounds, and the running reference of earlier rounds.
    sent : ArrayRecord
        The global arrays sent this round.
    replies : list[ParsedReply]
        Replies that passed every other check, each with its arrays.
    log_dropped : Callable[[int, str], None]
        Called with the node id and the reason of each refused reply.

    Returns
    -------
    tuple[list[ParsedReply], Screening]
        The kept replies in the order given, and what the guard measured.
    """
    base = _numpy(sent)
    screening = guard.screen(base, [_numpy(reply.arrays, names=base) for reply in replies])
    for reply, reason in zip(replies, screening.reasons):
        if reason is not None:
            log_dropped(reply.node_id, reason)
    return [replies[i] for i in screening.kept], screening


def _numpy(arrays: ArrayRecord | None, names: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    if arrays is None:
        raise ValueError("a reply screened for its update must carry its client-model arrays")
    return {name: arrays[name].numpy() for name in (names if names is not None else arrays.keys())}
