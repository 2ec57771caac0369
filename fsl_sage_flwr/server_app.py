"""Flower ServerApp entry: builds the FSL-SAGE strategy from the run config and runs it."""

from __future__ import annotations

import random
import time
from logging import INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fsl_sage_flwr.config import RunSettings
from fsl_sage_flwr.data import load_dataset
from fsl_sage_flwr.models import build_split_model, required_input_shape
from fsl_sage_flwr.results import ResultsWriter, resolve_output_dir
from fsl_sage_flwr.training import derive_seed
from strategies import FSLSage, FSLSageServerConfig

MIB = 1024 * 1024

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run FSL-SAGE for ``num-server-rounds`` rounds and save results and models."""
    settings = RunSettings.from_run_config(context.run_config)
    random.seed(settings.seed)
    torch.manual_seed(derive_seed(settings.seed, "server-init"))
    data = load_dataset(
        settings.dataset,
        data_dir=settings.data_dir or None,
        input_shape=required_input_shape(settings.model),
        train_subset=settings.train_subset or None,
        seed=settings.seed,
    )
    split = build_split_model(
        settings.model,
        num_classes=data.num_classes,
        input_shape=data.input_shape,
        aux_variant=settings.aux_variant,
    )
    initial_arrays = ArrayRecord(split.client.state_dict())

    def new_aux() -> torch.nn.Module:
        return build_split_model(
            settings.model,
            num_classes=data.num_classes,
            input_shape=data.input_shape,
            aux_variant=settings.aux_variant,
        ).aux

    strategy = FSLSage(
        client_model=split.client,
        server_model=split.server,
        aux_factory=new_aux,
        cut_shape=split.cut_shape,
        num_classes=data.num_classes,
        config=FSLSageServerConfig(
            align_interval=settings.align_interval,
            buffer_size=settings.buffer_size,
            align_epochs=settings.align_epochs,
            align_batch_size=settings.align_batch_size,
            align_lr=settings.align_lr,
            lr=settings.lr,
            weight_decay=settings.weight_decay,
            local_epochs=settings.local_epochs,
            max_train_examples=len(data.train),
            seed=settings.seed,
        ),
        testset=data.test,
        fraction_train=settings.fraction_train,
        min_train_nodes=settings.min_train_nodes,
        min_available_nodes=settings.min_available_nodes,
    )
    folder = resolve_output_dir(settings.output_dir, settings.run_name, settings.algorithm)
    log(INFO, "results go to %s", folder)
    writer = ResultsWriter(folder)
    clock = {"last": time.monotonic()}

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        metrics = strategy.evaluate_global(server_round, arrays)
        if metrics is None:
            return None
        up, down = strategy.ledger.round_totals(server_round)
        cumulative = strategy.ledger.cumulative_bytes(server_round)
        now = time.monotonic()
        row = {
            "algorithm": settings.algorithm,
            "round": server_round,
            "accuracy": metrics["accuracy"],
            "loss": metrics["loss"],
            "bytes_up": up,
            "bytes_down": down,
            "cumulative_bytes": cumulative,
            "round_seconds": now - clock["last"],
        }
        clock["last"] = now
        writer.write(row)
        log(
            INFO,
            "round %d: test accuracy %.4f, loss %.4f, %.2f MiB sent so far",
            server_round,
            metrics["accuracy"],
            metrics["loss"],
            cumulative / MIB,
        )
        return metrics

    result = strategy.start(
        grid=grid,
        initial_arrays=initial_arrays,
        num_rounds=settings.num_server_rounds,
        train_config=ConfigRecord({"seed": settings.seed}),
        evaluate_fn=evaluate,
    )
    final_arrays = result.arrays if result.arrays is not None else initial_arrays
    _save_models(folder, final_arrays, split.server.state_dict())
    log(INFO, "final models and %s saved in %s", ResultsWriter.FILE_NAME, folder)


def _save_models(folder: Path, client_arrays: ArrayRecord, server_state: dict) -> None:
    torch.save(client_arrays.to_torch_state_dict(), folder / "client_model.pt")
    torch.save(server_state, folder / "server_model.pt")
