"""ServerApp: FSL-SAGE rounds, the split transformer's perplexity on the held-out text after each."""

from __future__ import annotations

import json
import time
from logging import INFO
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fsl_sage_flwr import AlignmentSettings, LocalTraining
from tiny_transformer.task import load_testset, make_spec

app = ServerApp()


def results_folder(context: Context) -> Path:
    """``output-dir``/``run-name``; a relative ``output-dir`` is taken under the home folder.

    The ServerApp runs from Flower's installed copy of the app, in the SuperLink's
    working folder, so a path relative to that folder would be of no use.
    """
    cfg = context.run_config
    base = Path(str(cfg["output-dir"])).expanduser()
    if not base.is_absolute():
        base = Path.home() / base
    return base / (str(cfg["run-name"]) or f"run-{context.run_id}")


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    seed = int(cfg["seed"])
    num_rounds = int(cfg["num-server-rounds"])
    folder = results_folder(context)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "perplexity.json"
    log(INFO, "tiny-transformer: per-round validation perplexity goes to %s", path)

    torch.manual_seed(seed)  # the initial client and server models
    strategy = make_spec(testset=load_testset(context)).strategy(
        training=LocalTraining(
            batch_size=int(cfg["batch-size"]),
            local_epochs=int(cfg["local-epochs"]),
            upload_interval=int(cfg["upload-interval"]),
            lr=float(cfg["lr"]),
            seed=seed,
        ),
        alignment=AlignmentSettings(
            interval=int(cfg["align-interval"]),
            epochs=int(cfg["align-epochs"]),
            batch_size=int(cfg["align-batch-size"]),
            buffer_size=int(cfg["buffer-size"]),
            seed=seed,
        ),
        min_available_nodes=int(cfg["min-available-nodes"]),
    )

    rounds: list[dict[str, float]] = []
    started = time.monotonic()

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        metrics = strategy.evaluate_global(server_round, arrays)
        row = {
            "round": server_round,
            "perplexity": float(metrics["perplexity"]),
            "loss": float(metrics["loss"]),
            "seconds": round(time.monotonic() - started, 2),
        }
        rounds.append(row)
        path.write_text(json.dumps({"rounds": rounds}, indent=2) + "\n")
        log(INFO, "tiny-transformer: round %d validation perplexity %.2f", server_round, row["perplexity"])
        return metrics

    strategy.start(
        grid=grid,
        initial_arrays=strategy.initial_arrays(),
        num_rounds=num_rounds,
        evaluate_fn=evaluate,
    )
    final = rounds[-1]
    log(INFO, "tiny-transformer: perplexity %.2f after round %d (%s)", final["perplexity"], final["round"], path)
