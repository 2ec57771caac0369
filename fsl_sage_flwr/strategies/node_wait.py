"""Waiting for a federation's nodes: until enough are connected, or a timeout that names both counts."""

from __future__ import annotations

import time
from logging import INFO

from flwr.common.logger import log
from flwr.serverapp import Grid


def wait_for_nodes(grid: Grid, minimum: int, timeout: float) -> list[int]:
    """Return the connected node ids once ``minimum`` are connected.

    Raises
    ------
    RuntimeError
        After ``timeout`` seconds with fewer nodes connected, naming both counts.
    """
    deadline = time.monotonic() + timeout
    next_log = 0.0
    while len(node_ids := sorted(grid.get_node_ids())) < minimum:
        now = time.monotonic()
        if now >= deadline:
            raise RuntimeError(
                f"waited {timeout:.0f} s for {minimum} nodes ('min-available-nodes'), {len(node_ids)} "
                "connected: start more nodes, or lower 'min-available-nodes'"
            )
        if now >= next_log:
            log(INFO, "waiting for nodes: %d of %d connected", len(node_ids), minimum)
            next_log = now + 10.0
        time.sleep(0.5)
    return node_ids
