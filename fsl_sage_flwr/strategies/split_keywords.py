"""The checks of a split strategy's constructor keywords, made when it is built."""

from __future__ import annotations

import math

from fsl_sage_flwr.core.settings import require_argument


def check_split_keywords(
    *,
    num_classes: int | None,
    max_examples: int,
    max_rounds_without_replies: int,
    node_wait_timeout: float,
    fraction_train: float,
    min_train_nodes: int,
    min_available_nodes: int,
) -> None:
    """Refuse a bad constructor keyword when the strategy is built, not rounds later."""
    # None: float labels, which no class count bounds (the objective checks the pair).
    require_argument(num_classes is None or num_classes >= 2, "num_classes", num_classes, ">= 2")
    require_argument(max_examples >= 1, "max_examples", max_examples, ">= 1")
    require_argument(max_rounds_without_replies >= 1, "max_rounds_without_replies", max_rounds_without_replies, ">= 1")
    require_argument(
        math.isfinite(node_wait_timeout) and node_wait_timeout > 0,
        "node_wait_timeout",
        node_wait_timeout,
        "a finite number > 0",
    )
    require_argument(0.0 < fraction_train <= 1.0, "fraction_train", fraction_train, "in (0, 1]")
    require_argument(min_train_nodes >= 1, "min_train_nodes", min_train_nodes, ">= 1")
    require_argument(
        min_available_nodes >= min_train_nodes,
        "min_available_nodes",
        min_available_nodes,
        f">= min_train_nodes ({min_train_nodes})",
    )
