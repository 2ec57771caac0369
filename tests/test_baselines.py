"""Tests of the baselines: CSE-FSL, Flower's FedAvg, SplitFed-MS and SplitFed-SS."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fsl_sage_flwr.app.algorithms import get_algorithm
from fsl_sage_flwr.app.client_app import app as client_app
from fsl_sage_flwr.app.client_app import build_client
from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.app.results import read_results
from fsl_sage_flwr.app.run_split import server_split
from fsl_sage_flwr.app.server_app import app as server_app
from fsl_sage_flwr.transport.ledger import ByteLedger, MeteredGrid, record_nbytes
from fsl_sage_flwr.transport.metrics import TrainMetricsTap
from simulations.compare import build_run_configs
from simulations.in_process import InProcessGrid, run_in_process
from simulations.testing import app_config, reply_from


@pytest.mark.e2e  # four in-process runs of 6 rounds
@pytest.mark.parametrize("algorithm", ["cse-fsl", "fedavg", "splitfed-ms", "splitfed-ss"])
def test_each_baseline_reaches_80_percent_on_digits(tmp_path, algorithm):
    # Prepare: 4 clients, 6 rounds, the same digits partition as FSL-SAGE's test
    config = app_config(tmp_path, algorithm=algorithm, num_server_rounds=6, min_available_nodes=4)
    # Execute
    run_in_process(server_app, client_app, config, num_nodes=4)
    # Assert
    rows = read_results(tmp_path / "run" / "results.jsonl")
    assert rows[-1]["round"] == 6
    assert rows[-1]["accuracy"] >= 0.80, rows[-1]


def test_fedavg_in_the_comparison_averages_as_flowers_own_class_with_the_update_checks_off(tmp_path):
    # Prepare: the app's FedAvg and Flower's, and the same two replies for each
    settings = RunSettings.from_run_config(app_config(tmp_path, algorithm="fedavg", update_norm_factor=0.0))
    setup = get_algorithm("fedavg").build_server(settings, server_split(settings), TrainMetricsTap())
    flower = FedAvg(fraction_evaluate=0.0, min_evaluate_nodes=0)
    state = setup.initial_arrays.to_torch_state_dict()

    def replies():
        return [
            reply_from(
                node_id,
                RecordDict(
                    {
                        "arrays": ArrayRecord(
                            {k: v * factor if v.is_floating_point() else v for k, v in state.items()}
                        ),
                        "metrics": MetricRecord({"num-examples": examples}),
                    }
                ),
            )
            for node_id, factor, examples in ((1, 1.0, 10), (2, 3.0, 30))
        ]

    # Execute
    ours, _ = setup.strategy.aggregate_train(1, replies())
    theirs, _ = flower.aggregate_train(1, replies())
    # Assert: Flower's class underneath, and exactly its weighted average
    assert isinstance(setup.strategy, FedAvg)
    for key in theirs:
        np.testing.assert_array_equal(ours[key].numpy(), theirs[key].numpy())


class RecordingGrid(InProcessGrid):
    """An in-process grid that keeps every message and reply it carries."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent, self.received = [], []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.sent.extend(messages)
        replies = list(super().send_and_receive(messages, timeout=timeout))
        self.received.extend(replies)
        return replies


@pytest.mark.parametrize("algorithm", ["splitfed-ms", "splitfed-ss"])
def test_splitfed_exchanges_one_message_pair_per_batch_and_books_their_bytes(tmp_path, algorithm):
    # Prepare: 3 clients, batch 32, one round
    config = app_config(tmp_path, algorithm=algorithm, num_server_rounds=1, batch_size=32, min_available_nodes=3)
    settings = RunSettings.from_run_config(config)
    ledger = ByteLedger()
    setup = get_algorithm(algorithm).build_server(settings, server_split(settings), TrainMetricsTap(), ledger=ledger)
    recording = RecordingGrid(client_app, 3, config)
    metered = MeteredGrid(recording, ledger)
    # Execute
    setup.strategy.start(metered, setup.initial_arrays, num_rounds=1, train_config=ConfigRecord({"seed": 0}))
    # Assert: per node, one pair per local batch plus the closing pair that returns the model
    batches = {}
    for partition in range(3):
        n = len(build_client(recording.context_of(partition))[0].y)
        batches[recording.context_of(partition).node_id] = n // 32 + (1 if n % 32 >= 2 else 0)
    pairs = Counter(m.metadata.dst_node_id for m in recording.sent)
    replies = Counter(r.metadata.src_node_id for r in recording.received)
    assert pairs == replies == Counter({node: k + 1 for node, k in batches.items()})
    # Assert: the ledger equals the nbytes of all arrays carried (plus, for MS, the
    # server-side copies going to the fed server and back)
    carried = sum(record_nbytes(m.content) for m in recording.sent + recording.received)
    server_copies = 0
    if algorithm == "splitfed-ms":
        server_copies = 3 * 2 * sum(t.nbytes for t in setup.strategy.server_model.state_dict().values())
    assert metered.ledger.cumulative_bytes() == carried + server_copies
    # Assert: every uploaded activation got its gradient back, labels travelled too
    smashed = [r.content.array_records["smashed"] for r in recording.received if "smashed" in r.content.array_records]
    grads = [m.content.array_records["grad"] for m in recording.sent if "grad" in m.content.array_records]
    assert sum(s["z"].shape[0] for s in smashed) == sum(g["grad"].shape[0] for g in grads)
    assert sum(s["y"].shape[0] for s in smashed) == sum(batches.values()) * 32 - sum(
        32 - n % 32 for n in (len(build_client(recording.context_of(p))[0].y) for p in range(3)) if n % 32 >= 2
    )


def test_same_seed_same_partition_across_strategies(tmp_path):
    # Prepare: the comparison's run configs
    options = {
        "strategies": "fsl-sage,cse-fsl,fedavg,splitfed-ms,splitfed-ss",
        "run_config": "batch-size=16",
        "dataset": "digits",
        "model": "cnn",
        "rounds": 2,
        "alpha": 0.5,
        "partitioning": "dirichlet",
        "seed": 3,
        "clients": 4,
    }
    configs = build_run_configs(options, tmp_path)
    # Assert: the configs differ only in the algorithm and the run name
    stripped = [{k: v for k, v in c.items() if k not in ("algorithm", "run-name")} for c in configs.values()]
    assert all(s == stripped[0] for s in stripped)
    # Execute: each strategy's client 2 loads its data
    base = app_config(tmp_path, **{k.replace("-", "_"): v for k, v in stripped[0].items() if k != "output-dir"})
    images = []
    for name in configs:
        context = Context(
            run_id=1,
            node_id=5,
            node_config={"partition-id": 2, "num-partitions": 4},
            state=RecordDict(),
            run_config={**base, "algorithm": name},
        )
        client, _ = build_client(context)
        images.append((client.x.numpy(), client.y.numpy()))
    # Assert: identical samples for every strategy
    for x, y in images[1:]:
        np.testing.assert_array_equal(x, images[0][0])
        np.testing.assert_array_equal(y, images[0][1])


def test_splitfed_client_keeps_the_optimizer_state_of_its_last_batch(tmp_path):
    # Prepare: a SplitFed client asked to keep its Adam state across rounds
    config = app_config(tmp_path, algorithm="splitfed-ss", batch_size=32, keep_optimizer_state=True)
    context = Context(
        run_id=1,
        node_id=5,
        node_config={"partition-id": 0, "num-partitions": 4},
        state=RecordDict(),
        run_config=config,
    )
    client, settings = build_client(context)
    base = {**settings.to_config(), "seed": 0, "server-round": 1}
    model = [t.numpy() for t in client.split.client.state_dict().values()]
    # Execute: a whole round of steps, feeding back zero gradients
    step, grad, result = 0, None, None
    while result is None:
        client, _ = build_client(context)
        result, smashed, _ = client.step({**base, "step": step}, model if step == 0 else None, grad)
        grad = None if smashed is None else np.zeros_like(smashed[0])
        step += 1
    # Assert: Adam counted one step per batch, the last one included
    kept = context.state["splitfed.client-optimizer"].to_torch_state_dict()
    assert int(kept["0.step"]) == step - 1


@pytest.mark.parametrize(
    ("algorithm", "server_part", "aux_part"),
    [("fsl-sage", False, True), ("cse-fsl", False, True), ("fedavg", True, False), ("splitfed-ms", False, False)],
)
def test_a_client_builds_only_its_parts_once_per_process(tmp_path, algorithm, server_part, aux_part):
    # Prepare: two nodes of one run
    config = app_config(tmp_path, algorithm=algorithm)
    contexts = [
        Context(
            run_id=1,
            node_id=n,
            node_config={"partition-id": n, "num-partitions": 4},
            state=RecordDict(),
            run_config=config,
        )
        for n in (0, 1)
    ]
    # Execute
    first, _ = build_client(contexts[0])
    second, _ = build_client(contexts[1])
    # Assert: the same modules serve both messages; no part the algorithm does not use
    assert first.split is second.split
    assert (first.split.server is not None) == server_part
    assert (first.split.aux is not None) == aux_part


def test_splitfed_summary_names_its_mode(tmp_path, caplog):
    # Prepare
    settings = RunSettings.from_run_config(app_config(tmp_path, algorithm="splitfed-ms"))
    setup = get_algorithm("splitfed-ms").build_server(settings, server_split(settings), TrainMetricsTap())
    # Execute: what the start-up log shows
    with caplog.at_level(logging.INFO, logger="flwr"):
        setup.strategy.summary()
    # Assert: FedAvg's sampling, the split settings, the mode
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Minimum available nodes: 2" in text
    assert "batch 16 | epochs 1" in text
    assert "SplitFed-MS: one server-side copy per client (SFL-V1)" in text
