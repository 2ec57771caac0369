"""The error a reply that breaks the message contract raises, and the integer check every parser shares."""

from __future__ import annotations

from typing import Any


class MalformedReplyError(ValueError):
    """A client reply that breaks the wire contract; the reason is the message."""


def strict_int(value: Any, key: str) -> int:
    """Return ``value`` if it is an integer; a float or bool is refused, not truncated."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedReplyError(f"'{key}' must be an integer, got {type(value).__name__}")
    return value
