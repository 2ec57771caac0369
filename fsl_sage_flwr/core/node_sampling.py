"""Which nodes train in a round: a seeded sample of a pool, known clients by partition first."""

from __future__ import annotations

import random
from collections.abc import Sequence

from fsl_sage_flwr.core.seeds import derive_seed
from fsl_sage_flwr.core.settings import require_argument

#: When a node is first warmed up (``warm-up``): every connected node before round 1
#: and on arrival, or only once it is first sampled.
WARM_UP_MODES = ("sampled", "all")


def sample_round_nodes(pool: Sequence[int], fraction: float, min_nodes: int, seed: int, server_round: int) -> list[int]:
    """Sample ``max(int(len(pool) * fraction), min_nodes)`` of ``pool``; keep the pool's order.

    The draw depends on the seed, the round and the positions in ``pool`` alone,
    so a pool listed by partition id (which stays fixed while node ids do not)
    gives the same clients in every run. With ``fraction`` 1 every node of the
    pool is taken, as in the setting of Nair et al., ICML 2025.

    Parameters
    ----------
    pool : Sequence[int]
        The node ids to sample from, in a fixed order.
    fraction : float
        Share of the pool to take, in (0, 1].
    min_nodes : int
        Nodes to take at least (all of them when the pool is smaller).
    seed : int
        The run's seed.
    server_round : int
        The round, so that each round draws anew.

    Returns
    -------
    list[int]
        The sampled node ids, in pool order.
    """
    wanted = max(int(len(pool) * fraction), min_nodes)
    rng = random.Random(derive_seed(seed, server_round, "sample"))
    chosen = set(rng.sample(list(pool), min(len(pool), wanted)))
    return [node_id for node_id in pool if node_id in chosen]


class WarmUpTries:
    """How often each node was asked for its warm-up; a node is asked at most ``attempts`` times.

    Parameters
    ----------
    attempts : int
        Asks per node at most (a failed warm-up is asked again once per round).
    """

    def __init__(self, attempts: int) -> None:
        require_argument(attempts >= 1, "warm_up_attempts", attempts, ">= 1")
        self.attempts = attempts
        self._tries: dict[int, int] = {}

    def left(self, node_id: int) -> bool:
        """Whether ``node_id`` may still be asked."""
        return self._tries.get(node_id, 0) < self.attempts

    def take(self, node_id: int) -> bool:
        """Count a request to ask ``node_id``; whether it may be asked (False once all asks are used)."""
        tries = self._tries.get(node_id, 0)
        self._tries[node_id] = tries + 1
        return tries < self.attempts

    def first_refusal(self, node_id: int) -> bool:
        """Whether the last :meth:`take` of ``node_id`` was its first refused one (to warn once)."""
        return self._tries.get(node_id, 0) == self.attempts + 1
