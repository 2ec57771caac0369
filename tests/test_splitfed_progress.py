"""SplitFed fails the run after too many rounds in a row in which no node finished its round."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from fsl_sage_flwr.core.models import build_split_model
from fsl_sage_flwr.strategies.splitfed import SplitFed
from fsl_sage_flwr.transport.local_training import LocalTraining
from fsl_sage_flwr.transport.splitfed_step import smashed_arrays_record
from simulations.testing import NODES, ScriptedGrid, reply_from

BATCH = 8


def _split():
    torch.manual_seed(0)
    return build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8))


def _splitfed(mode: str, split) -> SplitFed:
    return SplitFed(
        mode=mode,
        batch_size=BATCH,
        client_model=split.client,
        server_model=split.server,
        cut_shape=split.cut_shape,
        num_classes=10,
        training=LocalTraining(batch_size=BATCH, upload_interval=1),
        min_train_nodes=1,
        min_available_nodes=2,
        max_rounds_without_replies=3,
    )


def _failing(msg: Message) -> Message:
    metadata = reply_from(msg.metadata.dst_node_id, RecordDict(), "train.splitstep").metadata
    return Message(error=Error(code=0, reason="client crashed: out of memory"), metadata=metadata)


def _one_batch_node(split):
    """Replies of a node holding one batch: its step-0 activations, then its closing model."""

    def respond(msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        step = int(msg.content.config_records["config"]["step"])
        content = RecordDict(
            {"metrics": MetricRecord({"partition-id": NODES[node], "num-batches": 1, "num-examples": BATCH})}
        )
        if step == 0:
            rng = np.random.default_rng(node)
            z = rng.normal(size=(BATCH, *split.cut_shape)).astype(np.float32)
            y = rng.integers(0, 10, size=BATCH).astype(np.int64)
            content["smashed"] = smashed_arrays_record(z, y, np.asarray([BATCH], np.int64))
        else:
            content["arrays"] = ArrayRecord(split.client.state_dict())
        return reply_from(node, content, "train.splitstep")

    return respond


def _round(strategy: SplitFed, split, server_round: int, respond) -> ArrayRecord | None:
    grid = ScriptedGrid(list(NODES), respond)
    first = strategy.configure_train(server_round, ArrayRecord(split.client.state_dict()), ConfigRecord(), grid)
    arrays, _ = strategy.aggregate_train(server_round, grid.send_and_receive(first))
    return arrays


@pytest.mark.parametrize("mode", ["ms", "ss"])
def test_splitfed_fails_after_three_rounds_of_error_replies_naming_the_reason(mode):
    # Prepare
    split = _split()
    strategy = _splitfed(mode, split)
    # Execute
    results = [_round(strategy, split, server_round, _failing) for server_round in (1, 2)]
    with pytest.raises(RuntimeError) as failure:
        _round(strategy, split, 3, _failing)
    # Assert
    assert results == [None, None]
    assert "3 rounds in a row without an accepted reply" in str(failure.value)
    assert "client crashed: out of memory" in str(failure.value)


@pytest.mark.parametrize("mode", ["ms", "ss"])
def test_one_finished_splitfed_round_resets_the_count(mode):
    # Prepare
    split = _split()
    strategy = _splitfed(mode, split)
    _round(strategy, split, 1, _failing)
    _round(strategy, split, 2, _failing)
    # Execute
    good = _round(strategy, split, 3, _one_batch_node(split))
    later = [_round(strategy, split, server_round, _failing) for server_round in (4, 5)]
    # Assert
    assert good is not None
    assert later == [None, None]
    with pytest.raises(RuntimeError):
        _round(strategy, split, 6, _failing)
