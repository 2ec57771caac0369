"""Why a node's reply was dropped: a fault of its setup, which repeats every round, or a transient one."""

from __future__ import annotations

import re

from fsl_sage_flwr.core.setup_checks import SETUP_KINDS
from fsl_sage_flwr.transport.errors import MalformedReplyError

# A client's SetupError reaches the server as text inside its error reply (Flower wraps it
# as "<class ...>:<'setup error (labels): ...'>"), so the kind is read back from that text.
_CLIENT_SETUP = re.compile(r"setup error \((" + "|".join(SETUP_KINDS) + r")\): ")
# Setup faults the server finds in a reply itself: activations of another shape, labels
# outside the classes, a partition id that is not the node's to claim (the checks of
# ``replies``, ``uploads``, ``guard`` and the strategies word them so).
_SERVER_SETUP = (
    (re.compile(r"array 'z' has shape "), "shapes"),
    (re.compile(r"labels (outside \[0, |have shape |hold NaN)"), "labels"),
    (
        re.compile(r"partition-id -?\d+ (outside \[0, |belongs to node |differs from this node's |is claimed by )"),
        "identity",
    ),
)


class IdentityClaimError(MalformedReplyError):
    """A reply claims a partition id it may not have: out of range, another node's, or not its own."""


def setup_kind(reason: Exception | str) -> str | None:
    """The setup kind (one of ``SETUP_KINDS``) a drop reason names, or ``None`` for a transient one.

    Parameters
    ----------
    reason : Exception or str
        What ``log_dropped`` was given: the error a check raised, or its text.

    Returns
    -------
    str or None
        ``"identity"`` for an :class:`IdentityClaimError`; the kind of a
        client's ``setup error (<kind>): ...`` text; ``"shapes"`` or ``"labels"``
        for uploads whose activations or labels do not fit the split; ``None``
        otherwise (a lost node, a timeout, a malformed or hostile reply).
    """
    if isinstance(reason, IdentityClaimError):
        return "identity"
    text = str(reason)
    match = _CLIENT_SETUP.search(text)
    if match:
        return match.group(1)
    for pattern, kind in _SERVER_SETUP:
        if pattern.search(text):
            return kind
    return None


def setup_detail(reason: str) -> str:
    """The part of a drop reason after ``setup error (<kind>): ``, without Flower's wrapping; else the reason."""
    match = _CLIENT_SETUP.search(reason)
    if not match:
        return reason
    detail = reason[match.end() :]
    return detail[: -len("'>")] if detail.endswith("'>") else detail
