"""The order in which the server model steps through a round's uploaded batches."""

from __future__ import annotations

import torch

from fsl_sage_flwr.core.seeds import derive_seed

#: How the server steps through a round's uploads (``server-order``): client after
#: client as the paper does, or all the round's batches shuffled together.
SERVER_ORDERS = ("partition", "mixed")


def server_step_order(num_steps: int, server_order: str, seed: int, server_round: int) -> list[int]:
    """Indices of a round's ``num_steps`` uploaded batches in the order the server trains on them.

    ``"partition"`` keeps the order given (client after client, each client's
    batches in upload order, as the reference code of Nair et al., ICML 2025,
    does); ``"mixed"`` shuffles them, seeded by ``seed`` and the round, so that
    the server's last steps, and its BatchNorm statistics, do not follow the
    last clients alone.

    Raises
    ------
    ValueError
        When ``server_order`` is not one of :data:`SERVER_ORDERS`.
    """
    if server_order not in SERVER_ORDERS:
        raise ValueError(f"server_order must be one of {list(SERVER_ORDERS)}, got {server_order!r}")
    if server_order == "partition":
        return list(range(num_steps))
    generator = torch.Generator().manual_seed(derive_seed(seed, server_round, "server-order"))
    return torch.randperm(num_steps, generator=generator).tolist()
