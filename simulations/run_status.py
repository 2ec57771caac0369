"""Read the one run of a private local SuperLink through `flwr ls`, retrying while the machine is loaded."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

from simulations.flower_cli import flwr_executable
from simulations.local_superlink import CONNECTION


class RunStatusError(RuntimeError):
    """`flwr ls` gave no readable answer in any of its tries."""


def run_status(
    env: dict[str, str],
    *,
    connection: str = CONNECTION,
    attempts: int = 6,
    timeout: float = 120.0,
    first_pause: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[str, str]:
    """Return the status and status details of the only run on the SuperLink that ``env`` names.

    ``flwr ls`` is pointed at the SuperLink through ``connection``, a named
    connection with its explicit address (see :mod:`simulations.local_superlink`
    for why not Flower's ``:local:``). Each try starts ``flwr ls``; a try that times out, exits with an error or
    prints no JSON is repeated after a pause that doubles each time, since on a
    loaded machine the ``flwr`` command alone can take tens of seconds to start.

    Parameters
    ----------
    env : dict[str, str]
        The environment that names the Flower home.
    connection : str
        The connection in that home's ``config.toml`` that names the SuperLink.
    attempts : int
        Tries before giving up.
    timeout : float
        Seconds each try may take.
    first_pause : float
        Seconds before the second try; doubled before each further one.
    sleep : Callable[[float], None]
        Waits between tries (replaceable in tests).

    Returns
    -------
    tuple[str, str]
        ``status`` (e.g. ``finished:completed``) and ``status-details``.

    Raises
    ------
    RunStatusError
        If no try gave a readable answer; names every try's failure.
    ValueError
        If ``attempts`` is below 1 or ``timeout`` not positive.
    """
    if attempts < 1 or not timeout > 0:
        raise ValueError(f"need attempts >= 1 and timeout > 0, got {attempts} and {timeout}")
    failures: list[str] = []
    pause = first_pause
    for attempt in range(1, attempts + 1):
        try:
            runs = _list_runs(env, connection, timeout)
        except _UnreadableAnswer as err:
            failures.append(f"try {attempt}: {err}")
            if attempt < attempts:
                sleep(pause)
                pause *= 2
            continue
        if len(runs) != 1:
            raise RunStatusError(f"expected one run on this SuperLink, found {len(runs)}")
        return str(runs[0]["status"]), str(runs[0].get("status-details") or "")
    raise RunStatusError("cannot read `flwr ls`:\n" + "\n".join(failures))


class _UnreadableAnswer(Exception):
    """One try of `flwr ls` timed out, failed or printed no run list."""


def _list_runs(env: dict[str, str], connection: str, timeout: float) -> list[dict[str, object]]:
    """One `flwr ls CONNECTION --format json`; its run list, or ``_UnreadableAnswer`` saying why not."""
    command = [flwr_executable(), "ls", connection, "--format", "json"]
    try:
        out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise _UnreadableAnswer(f"no answer within {timeout:g} s") from err
    try:
        runs = json.loads(out.stdout)["runs"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        said = (out.stdout[-300:] + " " + out.stderr[-300:]).strip()
        raise _UnreadableAnswer(f"exit {out.returncode}, {said or 'no output'}") from err
    if not isinstance(runs, list):
        raise _UnreadableAnswer(f"'runs' is not a list: {str(runs)[:200]}")
    return runs
