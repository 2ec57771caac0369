"""Splits with their own loss and labels, trained through both client styles and the legacy server."""

from __future__ import annotations

import math

import pytest
import torch
from flwr.app import ArrayRecord, Context
from flwr.clientapp import ClientApp
from flwr.server import ServerAppComponents, ServerConfig
from flwr.serverapp import Grid, ServerApp
from loss_tasks import task_data, task_spec

from fsl_sage_flwr import AlignmentSettings, FSLSageLegacy, LocalTraining
from simulations.in_process import run_in_process

NODES = 2
ROUNDS = 2
TASKS = ["tokens", "multilabel", "regression"]
SETTINGS = {
    "training": LocalTraining(batch_size=16, local_epochs=2, upload_interval=2, lr=0.02, seed=7),
    "alignment": AlignmentSettings(interval=1, epochs=2, batch_size=32, seed=7),
    "min_available_nodes": NODES,
    "min_train_nodes": NODES,
}


def _trainset(task: str):
    return lambda context: task_data(task, seed=int(context.node_config["partition-id"]))


def _server(task: str, rows: list[dict]) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = task_spec(task).strategy(**SETTINGS)

        def evaluate(server_round: int, arrays: ArrayRecord):
            metrics = strategy.evaluate_global(server_round, arrays)
            rows.append(dict(metrics))
            return metrics

        strategy.start(grid, strategy.initial_arrays(), num_rounds=ROUNDS, evaluate_fn=evaluate)

    return app


class _RecordingLegacy(FSLSageLegacy):
    rows: list[dict]

    def evaluate(self, server_round, parameters):
        loss, metrics = super().evaluate(server_round, parameters)
        self.rows.append({**metrics, "loss": loss})
        return loss, metrics


def _legacy_server(task: str, rows: list[dict]) -> ServerApp:
    def server_fn(context: Context) -> ServerAppComponents:
        strategy = _RecordingLegacy(task_spec(task).strategy(**SETTINGS))
        strategy.rows = rows
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=ROUNDS))

    return ServerApp(server_fn=server_fn)


def _message_api_clients(task: str) -> ClientApp:
    app = ClientApp()
    task_spec(task).register(app, _trainset(task))
    return app


def _numpy_clients(task: str) -> ClientApp:
    load = _trainset(task)
    return ClientApp(client_fn=lambda context: task_spec(task).client(load(context), context).to_client())


@pytest.mark.e2e  # three in-process federations of two rounds per task, tiny models
@pytest.mark.parametrize("task", TASKS)
def test_a_split_with_its_own_loss_learns_the_same_way_through_every_client_style_and_server(task):
    # Prepare
    rows: dict[str, list[dict]] = {"handlers": [], "client_fn": [], "legacy": []}
    # Execute
    run_in_process(_server(task, rows["handlers"]), _message_api_clients(task), {}, NODES, node_id_seed=1)
    run_in_process(_server(task, rows["client_fn"]), _numpy_clients(task), {}, NODES, node_id_seed=2)
    run_in_process(_legacy_server(task, rows["legacy"]), _numpy_clients(task), {}, NODES, node_id_seed=3)
    # Assert: the test loss is finite and falls; the same numbers each way
    losses = [row["loss"] for row in rows["handlers"]]
    assert len(losses) == ROUNDS + 1 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.9 * losses[0]
    assert rows["client_fn"] == rows["handlers"]
    assert rows["legacy"] == rows["handlers"]
    # Assert: rows carry the loss, and accuracy only for class labels per sample
    expected = {"loss", "perplexity"} if task == "tokens" else {"loss"}
    assert all(set(row) == expected for row in rows["handlers"])
    if task == "tokens":
        assert rows["handlers"][-1]["perplexity"] == pytest.approx(math.exp(losses[-1]))


@pytest.mark.e2e  # one in-process federation of two rounds per algorithm
@pytest.mark.parametrize("algorithm", ["cse-fsl", "fedavg", "splitfed-ss"])
def test_the_baselines_train_on_the_splits_loss(algorithm):
    # Prepare
    rows: list[dict] = []
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = task_spec("regression").strategy(algorithm=algorithm, **SETTINGS)
        evaluate = lambda r, arrays: rows.append(dict(strategy.evaluate_global(r, arrays)))  # noqa: E731
        strategy.start(grid, strategy.initial_arrays(), num_rounds=ROUNDS, evaluate_fn=evaluate)

    clients = ClientApp()
    task_spec("regression").register(clients, _trainset("regression"), algorithm=algorithm)
    # Execute
    torch.manual_seed(0)
    run_in_process(app, clients, {}, NODES)
    # Assert
    assert [set(row) for row in rows] == [{"loss"}] * (ROUNDS + 1)
    assert rows[-1]["loss"] < 0.9 * rows[0]["loss"]
