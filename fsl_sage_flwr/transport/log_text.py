"""Client-controlled text made safe for log lines and error messages: control characters escaped, length bounded."""

from __future__ import annotations

# Backslashes stay as they are: escaping twice (at the source and in the log line) changes nothing.
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def client_text(value: object, limit: int = 200) -> str:
    """Return ``value`` as one bounded line of text, safe to log or report.

    A client controls error reasons and some reply values; written as they are,
    an embedded newline forges a log line, an ANSI escape rewrites the terminal
    and a megabyte-long reason makes a megabyte-long record.

    Parameters
    ----------
    value : object
        The client-controlled value; converted with ``str``.
    limit : int
        Most characters of ``value`` kept (before escaping); the rest is cut
        and the cut is named.

    Returns
    -------
    str
        The text with every non-printable character escaped (``\\n``, ``\\x1b``,
        ...), followed by ``... [N more characters cut]`` when it was longer.
    """
    text = str(value)
    kept, cut = text[:limit], len(text) - limit
    escaped = "".join(_escape(char) for char in kept)
    return f"{escaped}... [{cut} more characters cut]" if cut > 0 else escaped


def _escape(char: str) -> str:
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    if char.isprintable():
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
