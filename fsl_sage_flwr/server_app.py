"""Flower ServerApp entry: builds the run's algorithm from the run config and runs it."""

from __future__ import annotations

import random
import time
from logging import INFO

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fsl_sage_flwr.algorithms import get_algorithm
from fsl_sage_flwr.config import RunSettings
from fsl_sage_flwr.data import load_dataset
from fsl_sage_flwr.ledger import MeteredGrid
from fsl_sage_flwr.metrics import PEAK_MEMORY_KEY, TrainMetricsTap
from fsl_sage_flwr.models import required_input_shape
from fsl_sage_flwr.strategies.split_fedavg import wait_for_nodes
from fsl_sage_flwr.results import ResultsWriter, resolve_output_dir
from fsl_sage_flwr.training import derive_seed

MIB = 1024 * 1024

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the selected algorithm for ``num-server-rounds`` rounds; save results and models."""
    settings = RunSettings.from_run_config(context.run_config)
    algorithm = get_algorithm(settings.algorithm)
    random.seed(settings.seed)  # Flower's FedAvg samples nodes with `random`
    torch.manual_seed(derive_seed(settings.seed, "server-init"))
    data = load_dataset(
        settings.dataset,
        data_dir=settings.data_dir or None,
        input_shape=required_input_shape(settings.model),
        train_subset=settings.train_subset or None,
        seed=settings.seed,
    )
    settings.check_data(len(data.train), data.num_classes)
    tap = TrainMetricsTap()
    setup = algorithm.build_server(settings, data, tap)
    metered = MeteredGrid(grid)
    folder = resolve_output_dir(settings.output_dir, settings.run_name, settings.algorithm)
    log(INFO, "%s: results go to %s", algorithm.description, folder)
    writer = ResultsWriter(folder)
    clock = {"last": time.monotonic()}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        metrics = setup.evaluate(server_round, arrays)
        ledger = metered.ledger
        up, down = ledger.round_totals(server_round)
        now = time.monotonic()
        row = {
            "algorithm": settings.algorithm,
            "round": server_round,
            "accuracy": metrics["accuracy"],
            "loss": metrics["loss"],
            "bytes_up": up,
            "bytes_down": down,
            "cumulative_bytes": ledger.cumulative_bytes(server_round),
            "cumulative_gib": ledger.cumulative_bytes(server_round) / 1024**3,
            "round_seconds": now - clock["last"],
            "client_peak_memory_bytes": int(tap.last.get(PEAK_MEMORY_KEY, 0)) if server_round else 0,
            "server_memory_bytes": setup.server_memory_bytes(),
            **setup.round_details(),
        }
        clock["last"] = now
        writer.write(row)
        # Bytes after this evaluation belong to the next round.
        ledger.current_round = server_round + 1
        log(
            INFO,
            "round %d: test accuracy %.4f, loss %.4f, %.2f MiB sent so far",
            server_round,
            row["accuracy"],
            row["loss"],
            row["cumulative_bytes"] / MIB,
        )
        return metrics

    # Flower's own FedAvg would wait for nodes without end; every algorithm waits here first.
    wait_for_nodes(metered, settings.min_available_nodes, settings.node_wait_timeout)
    result = setup.strategy.start(
        grid=metered,
        initial_arrays=setup.initial_arrays,
        num_rounds=settings.num_server_rounds,
        timeout=settings.round_timeout,
        train_config=ConfigRecord(settings.local_training().to_config()),  # read by Flower's FedAvg only
        evaluate_fn=evaluate,
    )
    final_arrays = result.arrays if result.arrays is not None else setup.initial_arrays
    for name, state in setup.final_models(final_arrays).items():
        torch.save(state, folder / f"{name}.pt")
    log(INFO, "final models and %s saved in %s", ResultsWriter.FILE_NAME, folder)
