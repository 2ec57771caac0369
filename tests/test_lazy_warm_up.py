"""Warm-up when first sampled: the work before a round grows with the nodes sampled, not the federation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from fsl_sage_flwr.core.alignment import AlignmentSettings
from fsl_sage_flwr.core.models import build_split_model
from fsl_sage_flwr.core.node_sampling import WarmUpTries, sample_round_nodes
from fsl_sage_flwr.strategies.fsl_sage import FSLSage
from fsl_sage_flwr.transport.local_training import LocalTraining
from fsl_sage_flwr.transport.replies import TrainReply
from simulations.testing import ScriptedGrid, fit_reply_content, reply_from, smashed_batches

#: Ten nodes: node id -> partition id (node ids in another order than partitions).
FEDERATION = {900 - 7 * p: p for p in range(10)}


def _strategy(warm_up: str, fraction_train: float) -> FSLSage:
    torch.manual_seed(0)
    split = build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8))
    return FSLSage(
        shared_model=split.client,
        client_model=split.client,
        server_model=split.server,
        aux_factory=lambda: build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8)).aux,
        alignment=AlignmentSettings(interval=2, epochs=2, batch_size=64),
        training=LocalTraining(batch_size=8, upload_interval=1),
        cut_shape=split.cut_shape,
        num_classes=10,
        fraction_train=fraction_train,
        min_train_nodes=1,
        min_available_nodes=len(FEDERATION),
        warm_up=warm_up,
    )


def _warm_up_reply(msg):
    node = msg.metadata.dst_node_id
    z, y, _ = smashed_batches(FEDERATION[node], n=8, batches=1)
    reply = TrainReply(partition_id=FEDERATION[node], num_examples=100, smashed=(z, y, np.asarray([8], np.int64)))
    return reply_from(node, fit_reply_content(reply))


def _first_round(strategy: FSLSage) -> tuple[ScriptedGrid, list]:
    grid = ScriptedGrid(list(FEDERATION), _warm_up_reply)
    requests = strategy.configure_train(1, strategy.initial_arrays(), ConfigRecord(), grid)
    return grid, list(requests)


def test_sampling_takes_the_fraction_in_pool_order_and_is_seeded():
    # Prepare
    pool = [5, 3, 9, 1, 7, 2, 8, 4, 6, 0]
    # Execute
    first = sample_round_nodes(pool, 0.5, 1, seed=0, server_round=3)
    again = sample_round_nodes(pool, 0.5, 1, seed=0, server_round=3)
    every = sample_round_nodes(pool, 1.0, 1, seed=0, server_round=3)
    # Assert
    assert first == again and len(first) == 5
    assert first == [n for n in pool if n in first]
    assert every == pool


def test_warm_up_tries_refuse_after_the_attempts_and_say_so_once():
    # Prepare
    tries = WarmUpTries(2)
    # Execute
    asked = [tries.take(7) for _ in range(4)]
    first_refusals = []
    for _ in range(2):
        tries.take(8)
    first_refusals.append(tries.take(8) is False and tries.first_refusal(8))
    tries.take(8)
    first_refusals.append(tries.first_refusal(8))
    # Assert
    assert asked == [True, True, False, False]
    assert first_refusals == [True, False]
    with pytest.raises(ValueError, match="warm_up_attempts"):
        WarmUpTries(0)


def test_only_the_sampled_nodes_are_warmed_up_before_round_one():
    # Prepare
    strategy = _strategy("sampled", fraction_train=0.3)
    # Execute
    grid, requests = _first_round(strategy)
    # Assert: 3 of 10 nodes get a warm-up message, and the same 3 a train request
    warmed = {m.metadata.dst_node_id for m in grid.sent}
    assert len(warmed) == 3
    assert {m.metadata.dst_node_id for m in requests} == warmed
    assert set(strategy.known_partitions().values()) == warmed
    assert strategy.pop_alignment_summary()["nodes_warmed_up"] == 3


def test_warm_up_all_asks_every_node_before_round_one():
    # Prepare
    strategy = _strategy("all", fraction_train=0.3)
    # Execute
    grid, requests = _first_round(strategy)
    # Assert
    assert {m.metadata.dst_node_id for m in grid.sent} == set(FEDERATION)
    assert len(requests) == 3
    assert strategy.pop_alignment_summary()["nodes_warmed_up"] == len(FEDERATION)


def test_with_every_node_sampled_both_warm_ups_give_the_same_round():
    # Prepare
    lazy, eager = _strategy("sampled", fraction_train=1.0), _strategy("all", fraction_train=1.0)
    # Execute
    _, lazy_requests = _first_round(lazy)
    _, eager_requests = _first_round(eager)
    # Assert: same nodes in the same order, the same aux models sent, the same server model
    assert [m.metadata.dst_node_id for m in lazy_requests] == [m.metadata.dst_node_id for m in eager_requests]
    for a, b in zip(lazy_requests, eager_requests):
        assert _arrays(a.content) == _arrays(b.content)
    for name, tensor in lazy.server_model.state_dict().items():
        assert torch.equal(tensor, eager.server_model.state_dict()[name])


def test_a_later_round_warms_up_the_newly_sampled_nodes_only():
    # Prepare
    strategy = _strategy("sampled", fraction_train=0.3)
    grid, _ = _first_round(strategy)
    first = set(strategy.known_partitions().values())
    # Execute
    grid.sent.clear()
    requests = list(strategy.configure_train(2, strategy.initial_arrays(), ConfigRecord(), grid))
    # Assert
    newly_warmed = {m.metadata.dst_node_id for m in grid.sent if m not in requests}
    sampled = {m.metadata.dst_node_id for m in requests}
    assert newly_warmed == sampled - first
    assert set(strategy.known_partitions().values()) == first | sampled


def test_an_unknown_warm_up_mode_is_refused():
    with pytest.raises(ValueError, match="warm_up"):
        _strategy("eventually", fraction_train=1.0)


def _arrays(content) -> dict:
    return {
        f"{record}/{key}": arrays[key].numpy().tobytes()
        for record, arrays in content.array_records.items()
        for key in arrays
    }
