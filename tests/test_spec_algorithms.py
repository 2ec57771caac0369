"""Every algorithm from a SplitSpec, in a user's own ServerApp and ClientApp, with its bytes metered."""

from __future__ import annotations

import pytest
from flwr.app import Context, RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp
from own_split import load_node_partition, make_spec_with_testset

from fsl_sage_flwr import ALGORITHM_NAMES, ByteMeter, LocalTraining
from fsl_sage_flwr.clients import SplitFedClient
from simulations.in_process import run_in_process

NODES = 3


def _own_apps(algorithm: str, outcome: dict) -> tuple[ServerApp, ClientApp]:
    """A user's ServerApp and ClientApp for ``algorithm``, from one spec; the server's figures go to ``outcome``."""
    spec = make_spec_with_testset(None)
    server_app = ServerApp()

    @server_app.main()
    def main(grid, context: Context) -> None:
        strategy = spec.strategy(
            algorithm=algorithm, training=LocalTraining(lr=0.01), min_available_nodes=NODES, min_train_nodes=NODES
        )
        meter = ByteMeter(grid)
        result = strategy.start(
            meter.grid,
            strategy.initial_arrays(),
            num_rounds=2,
            evaluate_fn=meter.evaluate_fn(strategy.evaluate_global),
        )
        outcome["metrics"] = result.evaluate_metrics_serverapp
        outcome["bytes"] = meter.totals()

    client_app = ClientApp()
    spec.register(client_app, load_node_partition, algorithm=algorithm)
    return server_app, client_app


@pytest.mark.e2e  # five in-process runs of two rounds
@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_a_users_own_apps_train_every_algorithm_from_one_spec_and_meter_its_bytes(algorithm):
    # Prepare
    outcome: dict = {}
    server_app, client_app = _own_apps(algorithm, outcome)
    # Execute
    run_in_process(server_app, client_app, {}, NODES)
    # Assert: evaluated after every round, learning, and each round's bytes booked to it
    metrics = outcome["metrics"]
    assert sorted(metrics) == [0, 1, 2]
    assert metrics[2]["accuracy"] > metrics[0]["accuracy"] + 0.2
    rounds = outcome["bytes"]
    assert [r.round for r in rounds] == [0, 1, 2]
    assert rounds[0].cumulative == 0 and rounds[1].up > 0 and rounds[2].down > 0
    assert rounds[2].cumulative == sum(r.up + r.down for r in rounds)
    assert metrics[2]["cumulative-bytes"] == rounds[2].cumulative


@pytest.mark.parametrize("algorithm", ["fsl-sage", "cse-fsl", "fedavg"])
def test_the_non_splitfed_clients_are_numpy_clients(algorithm):
    # Prepare
    spec = make_spec_with_testset(None)
    context = Context(1, 1, {"partition-id": 0, "num-partitions": NODES}, RecordDict(), {})
    # Execute
    client = spec.client(load_node_partition(context), context, algorithm=algorithm)
    # Assert: usable with ClientApp(client_fn=...)
    assert isinstance(client, NumPyClient)


def test_a_splitfed_client_is_built_for_the_per_batch_handlers():
    # Prepare
    spec = make_spec_with_testset(None)
    context = Context(1, 1, {"partition-id": 0, "num-partitions": NODES}, RecordDict(), {})
    # Execute
    client = spec.client(load_node_partition(context), context, algorithm="splitfed-ss")
    # Assert: only the client part travels to a SplitFed node
    assert isinstance(client, SplitFedClient)
    assert client.split.server is None and client.split.aux is None


@pytest.mark.parametrize("call", ["strategy", "register", "legacy"])
def test_an_unknown_algorithm_is_refused_naming_the_choices(call):
    # Prepare
    spec = make_spec_with_testset(None)
    # Execute / Assert
    with pytest.raises(ValueError, match="(unknown algorithm 'sgd'; choose one of fsl-sage)|(FSL-SAGE only)"):
        if call == "strategy":
            spec.strategy(algorithm="sgd")
        elif call == "register":
            spec.register(ClientApp(), load_node_partition, algorithm="sgd")
        else:
            spec.legacy_strategy(algorithm="sgd")
