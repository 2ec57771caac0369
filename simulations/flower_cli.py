"""What the runners share to start Flower's command-line tools: executables, ports and run-config words."""

from __future__ import annotations

import json
import socket
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: The address local Flower processes serve on.
LOOPBACK = "127.0.0.1"


def venv_bin(name: str) -> str:
    """Return a console script of this environment (next to ``sys.executable``), else ``name`` from PATH.

    Parameters
    ----------
    name : str
        The script, e.g. ``flwr`` or ``flower-superlink``.

    Returns
    -------
    str
        Its path, or ``name`` itself when this environment lacks it.
    """
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def flwr_executable() -> str:
    """Return the ``flwr`` command of this environment, or plain ``flwr`` from PATH."""
    return venv_bin("flwr")


def free_port() -> int:
    """Return a TCP port on the loopback address that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def toml_value(value: Any) -> str:
    """Write ``value`` as the TOML value Flower's ``--run-config`` and ``--node-config`` read.

    Parameters
    ----------
    value : Any
        A bool, a number, or anything else (written as a string).

    Returns
    -------
    str
        ``true``/``false``, the number, or a quoted string.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def run_config_arguments(run_config: Mapping[str, Any]) -> list[str]:
    """Return ``--run-config key=value`` words for ``flwr run``, one pair per key.

    Parameters
    ----------
    run_config : Mapping[str, Any]
        Run-config overrides.

    Returns
    -------
    list[str]
        The command-line words.
    """
    words: list[str] = []
    for key, value in run_config.items():
        words += ["--run-config", f"{key}={toml_value(value)}"]
    return words


def parse_run_config(text: str) -> dict[str, Any]:
    """Parse ``"key=value key2='text'"`` as ``flwr run --run-config`` does (TOML values).

    Parameters
    ----------
    text : str
        Space-separated ``key=value`` items.

    Returns
    -------
    dict[str, Any]
        The keys with their parsed values.

    Raises
    ------
    ValueError
        If an item has no ``=``.
    """
    result: dict[str, Any] = {}
    for item in text.split():
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"run-config item '{item}' is not key=value")
        result[key] = tomllib.loads(f"v = {value}")["v"]
    return result
