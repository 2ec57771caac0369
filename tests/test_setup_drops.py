"""A node set up wrong fails the run in the round it shows, naming the node and the cause, unless told otherwise."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Error, Message, MetricRecord, RecordDict

from fsl_sage_flwr.app.algorithms import get_algorithm
from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.app.run_split import server_split
from fsl_sage_flwr.core.models import build_split_model
from fsl_sage_flwr.strategies.setup_drops import SetupDropError
from fsl_sage_flwr.strategies.splitfed import SplitFed
from fsl_sage_flwr.transport.local_training import LocalTraining
from fsl_sage_flwr.transport.metrics import TrainMetricsTap
from fsl_sage_flwr.transport.replies import TrainReply
from fsl_sage_flwr.transport.splitfed_step import smashed_arrays_record
from simulations.testing import (
    ScriptedGrid,
    app_config,
    fit_reply_content,
    reply_from,
    smashed_batches,
    two_node_fsl_sage,
)

#: What Flower makes of a client's SetupError: the exception's type and text in one reason.
LABELS = "<class 'fsl_sage_flwr.core.setup_checks.SetupError'>:<'setup error (labels): labels out of range: found 12, num_classes 10'>"  # noqa: E501


def _error_reply(node_id: int, reason: str, message_type: str = "train") -> Message:
    metadata = reply_from(node_id, RecordDict(), message_type).metadata
    return Message(error=Error(code=2, reason=reason), metadata=metadata)


def _warm_up(strategy, split, partitions: dict[int, int], errors: dict[int, str] | None = None) -> None:
    """One warm-up exchange: each node of ``partitions`` sends a batch, or the error of ``errors``."""
    errors = errors or {}

    def respond(msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        if node in errors:
            return _error_reply(node, errors[node])
        z, y, _ = smashed_batches(partitions[node], n=8, batches=1)
        reply = TrainReply(partition_id=partitions[node], num_examples=100, smashed=(z, y, np.asarray([8], np.int64)))
        return reply_from(node, fit_reply_content(reply))

    strategy.warm_up(ScriptedGrid(sorted(partitions), respond), ArrayRecord(split.client.state_dict()))


def test_a_client_reporting_a_setup_error_fails_round_one_naming_node_and_cause():
    # Prepare
    strategy, split = two_node_fsl_sage()
    # Execute / Assert: the warm-up of round 1 fails, before any training
    with pytest.raises(SetupDropError, match=r"round 1: 1 node\(s\) dropped for their setup") as err:
        _warm_up(strategy, split, {101: 0, 202: 1}, errors={202: LABELS})
    assert "node 202 [labels]: labels out of range: found 12, num_classes 10." in str(err.value)
    assert "allow-partial-federation = true" in str(err.value)


def test_with_partial_federation_the_run_goes_on_and_the_summary_names_the_node(caplog):
    # Prepare
    strategy, split = two_node_fsl_sage(allow_partial_federation=True)
    # Execute
    with caplog.at_level(logging.WARNING, logger="flwr"):
        _warm_up(strategy, split, {101: 0, 202: 1}, errors={202: LABELS})
        strategy.finish_run()
    # Assert: node 101 warmed up; each round and the end name node 202 and its cause
    lines = [r.getMessage() for r in caplog.records]
    assert strategy.identities.get(101) is not None and strategy.identities.get(202) is None
    assert any("running without 1 node(s) set up wrong: node 202 [labels]: labels out of range" in m for m in lines)
    summary = [m for m in lines if m.strip().startswith("node 202 [labels]")]
    assert summary and summary[0].endswith("never contributed")
    assert strategy.drops.summary()[0]["reason"] == "labels out of range: found 12, num_classes 10"


def test_a_node_that_never_contributes_fails_the_run_at_its_end():
    # Prepare: node 202 fails for a transient reason in its warm-up
    strategy, split = two_node_fsl_sage()
    _warm_up(strategy, split, {101: 0, 202: 1}, errors={202: "RuntimeError: CUDA out of memory"})
    # Execute / Assert
    with pytest.raises(SetupDropError, match=r"1 node\(s\) never contributed to the run: node 202: .*out of memory"):
        strategy.finish_run()


@pytest.mark.parametrize("twin", [303, 55], ids=["higher-node-id", "lower-node-id"])
def test_a_partition_claimed_by_two_nodes_is_refused_to_both_whatever_their_ids(twin):
    # Prepare: node ``twin`` claims node 101's partition 0 in the same warm-up
    partitions = {101: 0, 202: 1, twin: 0}
    strict, split = two_node_fsl_sage()
    partial, _ = two_node_fsl_sage(allow_partial_federation=True)
    # Execute / Assert: by default the run fails naming both nodes
    nodes = " and ".join(str(n) for n in sorted((101, twin)))
    with pytest.raises(SetupDropError, match=rf"\[identity\]: partition-id 0 is claimed by nodes {nodes}"):
        _warm_up(strict, split, partitions)
    # Execute / Assert: a partial run keeps neither of them
    _warm_up(partial, split, partitions)
    assert partial.identities.get(101) is None and partial.identities.get(twin) is None
    assert partial.identities.get(202).partition_id == 1


def test_splitfed_refuses_a_partition_claimed_by_two_nodes_naming_both():
    # Prepare: nodes 101 and 202 both say they hold partition 0
    torch.manual_seed(0)
    split = build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8))
    strategy = SplitFed(
        mode="ss",
        batch_size=8,
        client_model=split.client,
        server_model=split.server,
        cut_shape=split.cut_shape,
        num_classes=10,
        training=LocalTraining(batch_size=8, upload_interval=1),
        min_train_nodes=1,
        min_available_nodes=2,
    )

    def respond(msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        content = RecordDict({"metrics": MetricRecord({"partition-id": 0, "num-batches": 1, "num-examples": 8})})
        z = np.random.default_rng(node).normal(size=(8, *split.cut_shape)).astype(np.float32)
        content["smashed"] = smashed_arrays_record(z, np.arange(8) % 10, np.asarray([8], np.int64))
        return reply_from(node, content, "train.splitstep")

    grid = ScriptedGrid([101, 202], respond)
    arrays = ArrayRecord(split.client.state_dict())
    # Execute / Assert
    messages = strategy.configure_train(1, arrays, None, grid)
    replies = grid.send_and_receive(messages)
    with pytest.raises(SetupDropError, match=r"partition-id 0 is claimed by nodes 101 and 202"):
        strategy.aggregate_train(1, replies)


def test_fedavg_fails_on_a_client_setup_error_and_runs_on_when_partial(tmp_path):
    # Prepare
    settings = {
        flag: RunSettings.from_run_config(app_config(tmp_path, algorithm="fedavg", allow_partial_federation=flag))
        for flag in (False, True)
    }
    strict, partial = (
        get_algorithm("fedavg").build_server(settings[flag], server_split(settings[flag]), TrainMetricsTap()).strategy
        for flag in (False, True)
    )
    # Execute / Assert
    with pytest.raises(SetupDropError, match=r"node 7 \[labels\]: labels out of range: found 12, num_classes 10"):
        strict.aggregate_train(1, [_error_reply(7, LABELS)])
    assert partial.aggregate_train(1, [_error_reply(7, LABELS)]) == (None, None)
