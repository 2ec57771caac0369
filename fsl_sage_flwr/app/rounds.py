"""The federated round loop, able to start at any round (for resumed runs).

Flower's ``Strategy.start`` always begins at round 1. This loop makes the same
calls in the same order (the start-up log with the strategy's ``summary``,
``configure_train``, the grid's ``send_and_receive``,
``aggregate_train``, then the evaluation pair and the server-side evaluation),
from any round on, and calls ``after_round`` once a round is complete, which is
where the ServerApp writes checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import INFO

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.serverapp.strategy.strategy_utils import log_strategy_start_info

from fsl_sage_flwr.app.deadlines import DeadlineGrid
from fsl_sage_flwr.strategies.split_server import SplitServer


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    arrays: ArrayRecord,
    *,
    first_round: int,
    num_rounds: int,
    timeout: float = 3600,
    train_config: ConfigRecord | None = None,
    evaluate_config: ConfigRecord | None = None,
    evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    after_round: Callable[[int, ArrayRecord], None] | None = None,
    deadlines: DeadlineGrid | None = None,
) -> ArrayRecord:
    """Run rounds ``first_round`` to ``num_rounds``; return the final global arrays.

    A run starting at round 1 evaluates ``arrays`` as round 0 first, as Flower's
    ``start`` does. ``arrays`` are the global arrays after round ``first_round - 1``.
    """
    if first_round < 1:
        raise ValueError(f"first_round must be >= 1, got {first_round}")
    train_config = ConfigRecord() if train_config is None else train_config
    evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
    if isinstance(strategy, SplitServer):  # what ``SplitServer.start`` would remember
        strategy.prepare_run(num_rounds, timeout)
    # The start-up log of Flower's ``start``: the run, then the strategy's settings.
    log(INFO, "Starting %s strategy:", type(strategy).__name__)
    log_strategy_start_info(num_rounds, arrays, train_config, evaluate_config)
    strategy.summary()
    if first_round == 1 and evaluate_fn is not None:
        evaluate_fn(0, arrays)
    for current_round in range(first_round, num_rounds + 1):
        log(INFO, "[ROUND %s/%s]", current_round, num_rounds)
        if deadlines is not None:
            deadlines.start_round(current_round)
        replies = grid.send_and_receive(
            messages=strategy.configure_train(current_round, arrays, train_config, grid), timeout=timeout
        )
        agg_arrays, agg_metrics = strategy.aggregate_train(current_round, replies)
        if agg_arrays is not None:
            arrays = agg_arrays
        if agg_metrics is not None:
            log(INFO, "\t└──> aggregated train metrics: %s", agg_metrics)
        if deadlines is not None:
            deadlines.record_progress(current_round, progressed=agg_arrays is not None)
        evaluate_replies = grid.send_and_receive(
            messages=strategy.configure_evaluate(current_round, arrays, evaluate_config, grid), timeout=timeout
        )
        strategy.aggregate_evaluate(current_round, evaluate_replies)
        if evaluate_fn is not None:
            evaluate_fn(current_round, arrays)
        if after_round is not None:
            after_round(current_round, arrays)
    finish_run = getattr(strategy, "finish_run", None)  # the summary of dropped nodes, as ``start`` gives it
    if callable(finish_run):
        finish_run()
    return arrays
