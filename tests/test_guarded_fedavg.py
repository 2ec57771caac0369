"""GuardedFedAvg: Flower's FedAvg average of the honest replies, whatever one hostile reply holds."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from hostile_arrays import hostile_model_arrays
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fsl_sage_flwr.core.models import build_split_model
from fsl_sage_flwr.strategies.guarded_fedavg import GuardedFedAvg
from fsl_sage_flwr.transport.arrays import to_array
from fsl_sage_flwr.transport.update_guard import UpdateLimits
from simulations.testing import ScriptedGrid, reply_from

NODES = [11, 12, 13, 14]
GLOBAL = {"w": np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4), "b": np.zeros(4, np.float32)}


def _arrays(values: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: to_array(v) for name, v in values.items()})


def _content(values: dict[str, np.ndarray], num_examples: int) -> RecordDict:
    return RecordDict({"arrays": _arrays(values), "metrics": MetricRecord({"num-examples": num_examples})})


def _honest(node: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(node)
    return {k: (v + 0.01 * rng.normal(size=v.shape)).astype(np.float32) for k, v in GLOBAL.items()}


def _round(strategy: FedAvg, hostile: dict[str, np.ndarray] | None) -> ArrayRecord | None:
    grid = ScriptedGrid(NODES, respond=lambda m: m)
    list(strategy.configure_train(1, _arrays(GLOBAL), ConfigRecord(), grid))
    replies = [reply_from(n, _content(_honest(n), 10 * n)) for n in NODES[:3]]
    if hostile is not None:
        replies.append(reply_from(NODES[3], _content(hostile, 40)))
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays


@pytest.mark.parametrize(
    "hostile",
    [
        {"w": np.full((3, 4), 3e38, np.float32), "b": GLOBAL["b"]},
        {k: v * np.float32(100) for k, v in GLOBAL.items()},
        {"w": GLOBAL["w"][::-1].copy(), "b": GLOBAL["b"]},
    ],
    ids=["huge", "scaled", "swapped"],
)
def test_a_hostile_reply_is_dropped_and_the_average_is_flowers_over_the_honest_ones(hostile, caplog):
    # Prepare
    guarded = GuardedFedAvg(min_available_nodes=len(NODES), min_train_nodes=len(NODES))
    plain = FedAvg(min_available_nodes=len(NODES), min_train_nodes=len(NODES))
    # Execute
    averaged = _round(guarded, hostile)
    honest_only = _round(plain, None)
    # Assert: bit for bit Flower's average of the three honest replies; the drop names node and bound
    for name in GLOBAL:
        np.testing.assert_array_equal(averaged[name].numpy(), honest_only[name].numpy())
    assert any("dropped reply from node 14: client-model update norm" in r.getMessage() for r in caplog.records)


def test_with_the_guard_off_the_median_keeps_one_huge_coordinate_out_of_the_average():
    # Prepare: the update bound off, the coordinate-wise median on
    strategy = GuardedFedAvg(
        min_available_nodes=len(NODES),
        min_train_nodes=len(NODES),
        aggregation="median",
        update_limits=UpdateLimits(factor=0.0),
    )
    huge = {"w": GLOBAL["w"].copy(), "b": GLOBAL["b"]}
    huge["w"].flat[0] = 1e30
    # Execute
    averaged = _round(strategy, huge)
    # Assert: every coordinate stays within the honest replies' small moves of the global model
    assert np.max(np.abs(averaged["w"].numpy() - GLOBAL["w"])) < 0.1
    assert averaged["w"].numpy().dtype == np.float32


def test_an_unknown_aggregation_is_refused_by_name():
    # Execute / Assert
    with pytest.raises(ValueError, match="'aggregation' must be one of"):
        GuardedFedAvg(aggregation="geometric-median")


def _model_round(strategy: FedAvg, sent: dict[str, np.ndarray], hostile: dict[str, np.ndarray] | None):
    grid = ScriptedGrid(NODES, respond=lambda m: m)
    list(strategy.configure_train(1, _arrays(sent), ConfigRecord(), grid))
    # Honest nodes move every array by a small share of its norm, each its own share.
    honest = [{k: v * np.float32(1 + 0.001 * (i + 1)) for k, v in sent.items()} for i in range(3)]
    replies = [reply_from(n, _content(arrays, 100)) for n, arrays in zip(NODES, honest)]
    if hostile is not None:
        replies.append(reply_from(NODES[3], _content(hostile, 100)))
    arrays, _ = strategy.aggregate_train(1, replies)
    return arrays


@pytest.mark.parametrize("aggregation", ["mean", "krum"])
def test_generated_hostile_model_arrays_never_reach_flowers_average(aggregation):
    # Prepare: the cnn client model's arrays (BatchNorm and conv arrays of equal shapes), honest and hostile replies
    torch.manual_seed(0)
    state = build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8)).client.state_dict()
    sent = {k: v.numpy() for k, v in state.items() if v.is_floating_point()}
    honest_only = _model_round(FedAvg(min_available_nodes=3, min_train_nodes=3), sent, None)
    figures: Counter = Counter()

    @settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def check(data):
        hostile = data.draw(hostile_model_arrays({k: v * np.float32(1.004) for k, v in sent.items()}, sent, figures))
        guarded = GuardedFedAvg(min_available_nodes=len(NODES), min_train_nodes=len(NODES) - 1, aggregation=aggregation)
        # Execute
        averaged = _model_round(guarded, sent, hostile)
        # Assert: the average over the three honest replies alone (the mean: Flower's, bit for bit)
        for name in sent:
            if aggregation == "mean":
                np.testing.assert_array_equal(averaged[name].numpy(), honest_only[name].numpy())
            else:
                assert any(
                    np.array_equal(averaged[name].numpy(), v * np.float32(1 + 0.001 * i))
                    for i, v in ((i, sent[name]) for i in (1, 2, 3))
                )

    check()
    print(f"\nFedAvg ({aggregation}): {sum(figures.values())} hostile models tried and kept out ({dict(figures)})")
