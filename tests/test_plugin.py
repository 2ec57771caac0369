"""Tests of the public API: a user's own split and data, every way of serving it."""

from __future__ import annotations

import logging
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.server import ServerAppComponents, ServerConfig
from flwr.serverapp import Grid, ServerApp
from torch import nn

from fsl_sage_flwr import AlignmentSettings, FSLSageLegacy, LocalTraining, SplitSpec, as_dataset
from fsl_sage_flwr.app.client_app import app as client_app
from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.app.server_app import app as server_app
from fsl_sage_flwr.data import load_dataset, partition_indices
from fsl_sage_flwr.plugin import numpy_client_reply
from fsl_sage_flwr.transport.arrays import ArraySpec, load_array
from fsl_sage_flwr.transport.errors import MalformedReplyError
from fsl_sage_flwr.transport.requests import decode_request
from simulations.flower_internals import assign_message_id
from simulations.in_process import run_in_process
from simulations.testing import ScriptedGrid, reply_from

NUM_NODES = 3
ROUNDS = 3


def _tabular_digits() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    data = load_dataset("digits", seed=0)
    flat = lambda images: images.reshape(len(images), -1)  # noqa: E731 - 64 features per sample
    return (flat(data.train.images), data.train.labels), (flat(data.test.images), data.test.labels)


TRAIN, TEST = _tabular_digits()
PARTS = partition_indices(TRAIN[1], NUM_NODES, partitioning="iid", alpha=1.0, seed=0)


def _spec() -> SplitSpec:
    return SplitSpec(
        client_model=lambda: nn.Sequential(nn.Linear(64, 48), nn.ReLU()),
        server_model=lambda: nn.Sequential(nn.Linear(48, 48), nn.ReLU(), nn.Linear(48, 10)),
        aux_model=lambda: nn.Linear(48, 10),
        cut_shape=(48,),
        num_classes=10,
        testset=TEST,
    )


def _trainset(context: Context) -> tuple[np.ndarray, np.ndarray]:
    indices = PARTS[int(context.node_config["partition-id"])]
    return TRAIN[0][indices], TRAIN[1][indices]


SETTINGS = {
    "training": LocalTraining(batch_size=16, upload_interval=2, seed=7),
    "alignment": AlignmentSettings(interval=2, epochs=5, batch_size=64, seed=7),
    "min_available_nodes": NUM_NODES,
}


def _message_api_server(history: list[float]) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        torch.manual_seed(0)
        strategy = _spec().strategy(**SETTINGS)

        def evaluate(server_round: int, arrays: ArrayRecord):
            metrics = strategy.evaluate_global(server_round, arrays)
            history.append(metrics["accuracy"])
            return metrics

        strategy.start(grid, ArrayRecord(strategy.shared_model.state_dict()), num_rounds=ROUNDS, evaluate_fn=evaluate)

    return app


class _RecordingLegacy(FSLSageLegacy):
    history: list[float]

    def evaluate(self, server_round, parameters):
        loss, metrics = super().evaluate(server_round, parameters)
        self.history.append(metrics["accuracy"])
        return loss, metrics


def _legacy_server(history: list[float]) -> ServerApp:
    def server_fn(context: Context) -> ServerAppComponents:
        torch.manual_seed(0)
        strategy = _RecordingLegacy(_spec().strategy(**SETTINGS))
        strategy.history = history
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=ROUNDS))

    return ServerApp(server_fn=server_fn)


def _numpy_client_app() -> ClientApp:
    return ClientApp(client_fn=lambda context: _spec().client(_trainset(context), context).to_client())


def _message_api_client_app() -> ClientApp:
    app = ClientApp()
    _spec().register(app, _trainset)
    return app


def test_both_client_paths_and_the_legacy_server_give_identical_metrics():
    # Prepare
    histories: dict[str, list[float]] = {"handlers": [], "client_fn": [], "legacy": []}
    # Execute
    run_in_process(_message_api_server(histories["handlers"]), _message_api_client_app(), {}, NUM_NODES, node_id_seed=1)
    run_in_process(_message_api_server(histories["client_fn"]), _numpy_client_app(), {}, NUM_NODES, node_id_seed=2)
    run_in_process(_legacy_server(histories["legacy"]), _numpy_client_app(), {}, NUM_NODES, node_id_seed=3)
    # Assert: rounds 0..3, the same numbers each way, and the model learned
    assert len(histories["handlers"]) == ROUNDS + 1
    assert histories["client_fn"] == histories["handlers"]
    assert histories["legacy"] == histories["handlers"]
    assert histories["handlers"][-1] > 0.6


def test_a_client_whose_model_differs_from_the_servers_fails_the_run_naming_the_cause():
    # Prepare: the clients' split cuts at 32 features, the server's at 48
    def client_fn(context: Context):
        spec = SplitSpec(
            client_model=lambda: nn.Sequential(nn.Linear(64, 32), nn.ReLU()),
            server_model=lambda: nn.Linear(32, 10),
            aux_model=lambda: nn.Linear(32, 10),
            cut_shape=(32,),
            num_classes=10,
        )
        return spec.client(_trainset(context), context).to_client()

    # Execute / Assert
    with pytest.raises(RuntimeError, match=r"(?s)no node warmed up.*size mismatch for 0.weight"):
        run_in_process(_message_api_server([]), ClientApp(client_fn=client_fn), {}, NUM_NODES)


def test_rounds_without_an_accepted_reply_stop_the_run_after_the_configured_count():
    # Prepare
    strategy = _spec().strategy(max_rounds_without_replies=2, **SETTINGS)
    bad = (1, RecordDict())
    # Execute: one empty round is tolerated, the second is not
    strategy.aggregate_replies(1, [bad])
    with pytest.raises(RuntimeError, match=r"2 rounds in a row.*node 1: reply holds records \[\]"):
        strategy.aggregate_replies(2, [bad])


def test_a_client_trains_only_with_settings_the_server_sent():
    # Prepare: a request whose config lacks the batch size
    config = {**LocalTraining().to_config(), "server-round": 1}
    del config["batch-size"]
    # Execute / Assert
    with pytest.raises(ValueError, match="train config lacks 'batch-size'"):
        decode_request([], config, shared_keys=[])


def test_settings_are_checked_when_made():
    with pytest.raises(ValueError, match="'batch-size' must be >= 2"):
        LocalTraining(batch_size=1)
    with pytest.raises(ValueError, match="'lr' must be a finite number > 0"):
        LocalTraining(lr=float("inf"))
    with pytest.raises(ValueError, match="'local-epochs' must be int"):
        LocalTraining(local_epochs=1.5)


@pytest.mark.parametrize("kind", ["numpy", "tensors", "torch-dataset"])
def test_user_data_of_any_per_sample_shape_becomes_a_dataset(kind):
    # Prepare: 5 samples of 3 x 2 features
    x = np.arange(30, dtype=np.float64).reshape(5, 3, 2)
    y = np.asarray([0, 1, 2, 1, 0])
    data = {
        "numpy": (x, y),
        "tensors": (torch.from_numpy(x), torch.from_numpy(y)),
        "torch-dataset": torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
    }[kind]
    # Execute
    dataset = as_dataset(data)
    # Assert
    assert dataset.images.dtype == np.float32 and dataset.images.shape == (5, 3, 2)
    assert dataset.labels.dtype == np.int64 and dataset.labels.tolist() == y.tolist()


def test_a_split_whose_parts_do_not_fit_is_refused_when_described():
    with pytest.raises(ValueError, match=r"client_model outputs \(48,\) per sample, cut_shape says \(40,\)"):
        SplitSpec(
            client_model=lambda: nn.Linear(64, 48),
            server_model=lambda: nn.Linear(40, 10),
            aux_model=lambda: nn.Linear(40, 10),
            cut_shape=(40,),
            num_classes=10,
            testset=TEST,
        )


def test_user_modules_named_strategies_and_clients_do_not_hide_the_package(tmp_path):
    # Prepare: a user's app folder with its own strategies.py and clients.py
    for name in ("strategies", "clients"):
        (tmp_path / f"{name}.py").write_text("raise ImportError('the user module was imported')\n")
    code = (
        "from fsl_sage_flwr import SplitSpec, FSLSage, FSLSageClient; "
        "import fsl_sage_flwr.app.client_app, fsl_sage_flwr.app.server_app"
    )
    # Execute
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    # Assert
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_message_api_handler_answers_as_flowers_client_fn_path():
    # Prepare: one warm-up request through each kind of ClientApp
    strategy = _spec().strategy(**SETTINGS)
    content = strategy.warm_up_request(ArrayRecord(strategy.shared_model.state_dict()))
    context = Context(run_id=1, node_id=5, node_config={"partition-id": 0}, state=RecordDict(), run_config={})

    def reply(app: ClientApp) -> RecordDict:
        message = Message(content=RecordDict(dict(content)), dst_node_id=5, message_type="train")
        assign_message_id(message, "m")
        return app(message, context).content

    # Execute
    via_handlers, via_client_fn = reply(_message_api_client_app()), reply(_numpy_client_app())
    # Assert: the same records, byte for byte
    assert sorted(via_handlers.keys()) == sorted(via_client_fn.keys())
    for key in via_handlers["fitres.parameters"].keys():
        assert via_handlers["fitres.parameters"][key].data == via_client_fn["fitres.parameters"][key].data


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("partitioning", "nope", "'partitioning' must be one of iid, dirichlet, got 'nope'"),
        ("alpha", float("nan"), "'alpha' must be a finite number > 0"),
        ("seed", -1, "'seed' must be >= 0"),
        ("lr", float("inf"), "'lr' must be a finite number > 0"),
        ("aux-variant", "huge", "'aux-variant' must be one of .*, got 'huge'"),
        ("min-train-nodes", 5, "'min-train-nodes' must be at most 'min-available-nodes' \\(2\\).*got 5"),
        ("server-order", "random", "'server-order' must be one of partition, mixed, got 'random'"),
        ("fidelity-samples", -1, "'fidelity-samples' must be >= 0"),
    ],
)
def test_the_server_refuses_a_bad_run_config_before_any_message(key, value, message):
    with pytest.raises(ValueError, match=message):
        RunSettings.from_run_config({**_app_config(), key: value})


def test_a_train_subset_smaller_than_the_classes_is_refused_by_the_server(tmp_path):
    # Prepare
    config = {**_app_config(), "train-subset": 9, "output-dir": str(tmp_path)}
    # Execute / Assert: the ServerApp stops before it sends anything
    with pytest.raises(ValueError, match="'train-subset' \\(9\\) must be 0 \\(all\\) or at least the 10 classes"):
        run_in_process(server_app, client_app, config, 2)


def _app_config() -> dict:
    return tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_too_few_nodes_fail_the_run_after_the_wait_timeout():
    # Prepare: 1 node connected, 3 wanted, a short wait
    strategy = _spec().strategy(node_wait_timeout=0.2, **SETTINGS)
    grid = ScriptedGrid([11], respond=None)
    # Execute / Assert
    with pytest.raises(RuntimeError, match=r"waited 0 s for 3 nodes \('min-available-nodes'\), 1 connected"):
        strategy.warm_up(grid, strategy.initial_arrays())


def test_a_node_that_never_replies_is_logged_and_asked_a_bounded_number_of_times(caplog):
    # Prepare: node 22 never answers its warm-up
    strategy = _spec().strategy(warm_up_attempts=2, **{**SETTINGS, "min_available_nodes": 2})
    clients = {
        11: _spec().client(_trainset(_context(0)), _context(0)),
        22: None,
    }

    def respond(msg):
        client = clients[msg.metadata.dst_node_id]
        return None if client is None else reply_from(11, numpy_client_reply(client, msg).content)

    grid = ScriptedGrid([11, 22], respond)
    grid.send_and_receive = _dropping_nones(grid.send_and_receive)
    # Execute: round 1's warm-up and three more rounds' late-joiner warm-ups
    with caplog.at_level(logging.WARNING, logger="flwr"):
        for server_round in range(1, 5):
            strategy.configure_train(server_round, strategy.initial_arrays(), ConfigRecord(), grid)
    # Assert: two asks, each logged as lost, then one line saying it is not asked again
    warm_ups_to_22 = [m for m in grid.sent if m.metadata.dst_node_id == 22]
    assert len(warm_ups_to_22) == 2
    lost = [r for r in caplog.records if "node 22: no reply within the round timeout" in r.getMessage()]
    assert len(lost) == 2
    assert sum("failed its warm-up 2 times" in r.getMessage() for r in caplog.records) == 1


def _context(partition_id: int) -> Context:
    return Context(
        run_id=1, node_id=partition_id, node_config={"partition-id": partition_id}, state=RecordDict(), run_config={}
    )


def _dropping_nones(send_and_receive):
    return lambda messages, timeout=None: [r for r in send_and_receive(messages, timeout=timeout) if r is not None]


def test_the_training_seed_fixes_the_initial_models_without_touching_the_callers_rng():
    # Prepare
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    # Execute
    first = _spec().strategy(training=LocalTraining(seed=4)).initial_arrays()
    after = torch.rand(1)
    second = _spec().strategy(training=LocalTraining(seed=4)).initial_arrays()
    other = _spec().strategy(training=LocalTraining(seed=5)).initial_arrays()
    # Assert
    assert torch.equal(after, expected_next)
    assert all(np.array_equal(first[k].numpy(), second[k].numpy()) for k in first.keys())
    assert not all(np.array_equal(first[k].numpy(), other[k].numpy()) for k in first.keys())


def test_an_array_whose_bytes_differ_from_its_declared_header_is_refused():
    # Prepare: declared float32 (4, 2), bytes of another shape, and bytes far too large
    expected = ArraySpec((4, 2), "float32")
    other_shape = Array(dtype="float32", shape=(4, 2), stype="numpy.ndarray", data=Array(np.zeros(3, np.float32)).data)
    too_large = Array(dtype="float32", shape=(4, 2), stype="numpy.ndarray", data=Array(np.zeros(5000, np.float32)).data)
    # Execute / Assert
    with pytest.raises(MalformedReplyError, match=r"has shape \(3,\), expected \(4, 2\)"):
        load_array("z", other_shape, expected)
    with pytest.raises(MalformedReplyError, match="more than"):
        load_array("z", too_large, expected)
    assert load_array("z", Array(np.ones((4, 2), np.float32)), expected).sum() == 8
