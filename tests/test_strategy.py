"""Tests of the FSL-SAGE strategy: warm-up, aggregation, server order, validation; alignment has its own file."""

from __future__ import annotations

import copy
import io
import logging

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fsl_sage_flwr.core.estimation import server_step
from fsl_sage_flwr.strategies import FSLSage
from fsl_sage_flwr.strategies.averaging import weighted_average
from fsl_sage_flwr.transport.arrays import state_dict_spec
from fsl_sage_flwr.transport.replies import TrainReply
from simulations.testing import (
    NODES,
    ScriptedGrid,
    constant_weights,
    fit_reply_content,
    reply_from,
    smashed_batches,
    train_reply_content,
    two_node_fsl_sage,
    two_node_reply,
    warm_up_two_nodes,
)


def test_warm_up_registers_each_node_and_sends_its_own_aligned_aux():
    # Prepare: what each node's aux would be without alignment
    strategy, split = two_node_fsl_sage()
    unaligned = {pid: strategy.initial_aux(pid).state_dict() for pid in NODES.values()}
    # Execute
    warm_up_two_nodes(strategy, split)
    grid = ScriptedGrid(list(NODES), None)
    messages = list(strategy.configure_train(1, ArrayRecord(split.client.state_dict()), ConfigRecord(), grid))
    # Assert: each node gets the client model and its own aligned aux
    assert sorted(m.metadata.dst_node_id for m in messages) == sorted(NODES)
    for message in messages:
        node = message.metadata.dst_node_id
        record = message.content.array_records["fitins.parameters"]
        sent = {
            k.removeprefix("aux."): torch.from_numpy(record[k].numpy()) for k in record.keys() if k.startswith("aux.")
        }
        assert message.content.config_records["fitins.config"]["aux-included"] is True
        for name, value in strategy.client_state(NODES[node]).aux.state_dict().items():
            torch.testing.assert_close(sent[name], value)
        assert not torch.equal(sent["0.weight"], unaligned[NODES[node]]["0.weight"])
    assert all(len(strategy.client_state(NODES[n]).buffer) == 8 for n in NODES)


def test_client_accessors_show_each_warmed_up_client_by_partition():
    # Prepare: a fresh aux built outside the run must leave the global RNG as it was
    strategy, split = two_node_fsl_sage()
    rng_before = torch.random.get_rng_state()
    fresh = strategy.initial_aux(0)
    rng_after = torch.random.get_rng_state()
    # Execute
    warm_up_two_nodes(strategy, split)
    status = strategy.client_status(0)
    # Assert
    assert torch.equal(rng_before, rng_after)
    assert torch.equal(strategy.initial_aux(0).state_dict()["0.weight"], fresh.state_dict()["0.weight"])
    assert strategy.known_partitions() == {partition: node for node, partition in NODES.items()}
    assert (status.partition_id, status.node_id, status.aux_pending, status.buffer_changed) == (0, 101, True, False)
    with pytest.raises(KeyError):
        strategy.client_state(7)


def test_aux_travels_again_only_after_it_changed():
    # Prepare: round 1 delivered both auxes; no alignment until round 2
    strategy, split = two_node_fsl_sage(align_interval=2)
    warm_up_two_nodes(strategy, split)
    grid = ScriptedGrid(list(NODES), None)
    arrays = ArrayRecord(split.client.state_dict())
    list(strategy.configure_train(1, arrays, ConfigRecord(), grid))
    strategy.aggregate_train(
        1, [reply_from(n, train_reply_content(n, constant_weights(split, 1.0), 20)) for n in NODES]
    )
    # Execute
    messages = list(strategy.configure_train(2, arrays, ConfigRecord(), grid))
    # Assert
    assert all(
        not any(k.startswith("aux.") for k in m.content.array_records["fitins.parameters"].keys()) for m in messages
    )
    assert all(m.content.config_records["fitins.config"]["aux-included"] is False for m in messages)


def test_aggregation_is_fedavg_weighted_by_sample_counts():
    # Prepare
    strategy, split = two_node_fsl_sage()
    warm_up_two_nodes(strategy, split)
    replies = [
        reply_from(101, train_reply_content(101, constant_weights(split, 1.0), num_examples=20)),
        reply_from(202, train_reply_content(202, constant_weights(split, 5.0), num_examples=60)),
    ]
    # Execute
    arrays, _ = strategy.aggregate_train(1, replies)
    # Assert: (1 * 20 + 5 * 60) / 80 = 4 for every float array, BatchNorm statistics
    # included; integer counters stay integers
    state = arrays.to_torch_state_dict()
    for name, value in state.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, torch.full_like(value, 4.0), msg=name)
    assert state["1.num_batches_tracked"].dtype == torch.int64


def test_server_model_trains_on_uploads_in_partition_order_and_is_not_averaged():
    # Prepare: the expected server = sequential steps on partition 0's then 1's batches
    strategy, split = two_node_fsl_sage(align_interval=100)
    warm_up_two_nodes(strategy, split)
    expected = copy.deepcopy(strategy.server_model)
    expected_opt = torch.optim.Adam(expected.parameters(), lr=1e-3, weight_decay=1e-4)
    expected_opt.load_state_dict(copy.deepcopy(strategy.server_optimizer.state_dict()))
    for partition in (0, 1):
        z, y, sizes = smashed_batches(partition)
        for zb, yb in zip(np.split(z, np.cumsum(sizes)[:-1]), np.split(y, np.cumsum(sizes)[:-1])):
            server_step(expected, expected_opt, torch.from_numpy(zb), torch.from_numpy(yb))
    replies = [  # arrival order reversed on purpose
        reply_from(202, train_reply_content(202, constant_weights(split, 5.0), 30)),
        reply_from(101, train_reply_content(101, constant_weights(split, 1.0), 20)),
    ]
    # Execute
    strategy.aggregate_train(1, replies)
    # Assert
    for (name, got), want in zip(strategy.server_model.state_dict().items(), expected.state_dict().values()):
        torch.testing.assert_close(got, want, msg=name)


def _recorded_server_order(monkeypatch, server_order: str) -> tuple[list[float], FSLSage]:
    """Run one round of two 4-batch replies; return each server step's first z value."""
    import fsl_sage_flwr.strategies.upload_training as upload_training

    strategy, split = two_node_fsl_sage(align_interval=100, server_order=server_order)
    warm_up_two_nodes(strategy, split)
    seen: list[float] = []

    def recording_step(model, optimizer, z, y, loss_fn):
        seen.append(float(z.flatten()[0]))
        return server_step(model, optimizer, z, y, loss_fn)

    weights = constant_weights(split, 1.0)
    with monkeypatch.context() as patch:
        patch.setattr(upload_training, "server_step", recording_step)
        strategy.aggregate_train(
            3,
            [
                reply_from(
                    node, fit_reply_content(two_node_reply(node, weights, 40, smashed=smashed_batches(part, batches=4)))
                )
                for node, part in NODES.items()
            ],
        )
    return seen, strategy


def test_mixed_server_order_trains_on_the_same_batches_interleaved_and_buffers_in_upload_order(monkeypatch):
    # Prepare: each uploaded batch is known by its first value
    first_values = {}
    for node, partition in NODES.items():
        z, _, sizes = smashed_batches(partition, batches=4)
        first_values[node] = [float(b.flatten()[0]) for b in np.split(z, np.cumsum(sizes)[:-1])]
    upload_order = first_values[101] + first_values[202]
    # Execute
    partition_steps, _ = _recorded_server_order(monkeypatch, "partition")
    mixed_steps, mixed = _recorded_server_order(monkeypatch, "mixed")
    mixed_again, _ = _recorded_server_order(monkeypatch, "mixed")
    # Assert: client after client by default; the same batches, another (seeded) order when mixed
    assert partition_steps == upload_order
    assert sorted(mixed_steps) == sorted(upload_order) and mixed_steps != upload_order
    assert mixed_steps == mixed_again
    # each client's buffer keeps its own batches in upload order (warm-up batch first)
    for partition, node in mixed.known_partitions().items():
        z, _ = mixed.client_state(partition).buffer.tensors()
        assert [float(z[i].flatten()[0]) for i in range(8, len(z), 8)] == first_values[node]


def test_an_unknown_server_order_is_refused():
    with pytest.raises(ValueError, match="server_order must be one of"):
        two_node_fsl_sage(server_order="random")


def test_aux_models_are_aligned_per_client_and_never_averaged():
    # Prepare: an alignment round in which only node 202 replies
    strategy, split = two_node_fsl_sage(align_interval=1)
    warm_up_two_nodes(strategy, split)
    before = {n: copy.deepcopy(strategy.client_state(NODES[n]).aux.state_dict()) for n in NODES}
    # Execute
    strategy.aggregate_train(1, [reply_from(202, train_reply_content(202, constant_weights(split, 1.0), 20))])
    # Assert: 202's aux was re-aligned; 101's is bit for bit what it was
    assert not torch.equal(strategy.client_state(NODES[202]).aux.state_dict()["0.weight"], before[202]["0.weight"])
    for name, value in strategy.client_state(NODES[101]).aux.state_dict().items():
        assert torch.equal(value, before[101][name]), name
    assert strategy.client_status(NODES[202]).aux_pending


def _break(kind: str, split) -> RecordDict:
    """A reply of node 202 broken in one way."""
    weights = constant_weights(split, 5.0)
    z, y, sizes = smashed_batches(1)
    reply_changes = {
        "missing-arrays": {"shared": None},
        "missing-smashed": {"smashed": None},
        "wrong-dtype": {"smashed": (z.astype(np.float64), y, sizes)},
        "nan": {"smashed": (np.where(np.arange(z.size).reshape(z.shape) == 0, np.nan, z).astype(np.float32), y, sizes)},
        "label-out-of-range": {"smashed": (z, np.where(np.arange(len(y)) == 0, 99, y), sizes)},
        "overflowing-batch-sizes": {"smashed": (z, y, np.asarray([2**62, 2**62, 2**62, 2**62 + 16], np.int64))},
        "one-sample-batch": {"smashed": (z, y, np.asarray([1, 15], np.int64))},
        # 30 examples at B = 8 allow 4 batches, not 5
        "too-many-samples": {"smashed": smashed_batches(1, n=8, batches=5)},
    }
    if kind == "wrong-shape":
        reply = two_node_reply(202, weights, 30)
        reply.shared["0.weight"] = np.zeros((3, 3), np.float32)
        return fit_reply_content(reply)
    content = fit_reply_content(two_node_reply(202, weights, 30, **reply_changes.get(kind, {})))
    arrays = content["fitres.parameters"]
    z_key = str(len(arrays.keys()) - 3)
    if kind == "extra-metric-record":
        content["more"] = MetricRecord({"x": 1.0})
    elif kind == "list-metric":
        content["fitres.metrics"]["peak-memory-bytes"] = [1, 2]
    elif kind == "float-partition-id":
        content["fitres.metrics"]["partition-id"] = 1.0
    elif kind == "truncated-npy":
        arrays[z_key] = Array(dtype="", shape=(), stype="numpy.ndarray", data=arrays[z_key].data[:200])
    elif kind == "pickled-objects":
        buffer = io.BytesIO()
        np.save(buffer, np.asarray([{"a": 1}] * 16, dtype=object), allow_pickle=True)
        arrays[z_key] = Array(dtype="", shape=(), stype="numpy.ndarray", data=buffer.getvalue())
    elif kind == "error-status":
        content["fitres.status"]["code"] = 3
    return content


@pytest.mark.parametrize(
    "kind",
    [
        "missing-arrays",
        "wrong-shape",
        "wrong-dtype",
        "nan",
        "missing-smashed",
        "label-out-of-range",
        "too-many-samples",
        "extra-metric-record",
        "list-metric",
        "truncated-npy",
        "pickled-objects",
        "overflowing-batch-sizes",
        "one-sample-batch",
        "float-partition-id",
        "error-status",
    ],
)
def test_malformed_reply_is_dropped_with_a_log_line_and_changes_nothing(kind, caplog):
    # Prepare: two identical strategies; one sees an extra malformed reply (a setup fault among
    # them, labels out of range, would fail the run by default: here the run goes on without it)
    clean, split = two_node_fsl_sage(align_interval=1, allow_partial_federation=True)
    dirty, _ = two_node_fsl_sage(align_interval=1, allow_partial_federation=True)
    warm_up_two_nodes(clean, split)
    warm_up_two_nodes(dirty, split)
    good = reply_from(101, train_reply_content(101, constant_weights(split, 1.0), 20))
    bad = reply_from(202, _break(kind, split))
    # Execute
    with caplog.at_level(logging.WARNING, logger="flwr"):
        dirty_arrays, _ = dirty.aggregate_train(1, [bad, good])
    clean_arrays, _ = clean.aggregate_train(1, [good])
    # Assert: one log line names the node; aggregate, server model and buffers as without it
    dropped = [r for r in caplog.records if "dropped reply from node 202" in r.getMessage()]
    assert len(dropped) == 1 and "partition 1" in dropped[0].getMessage()
    for name, value in clean_arrays.to_torch_state_dict().items():
        torch.testing.assert_close(dirty_arrays.to_torch_state_dict()[name], value)
    for (name, got), want in zip(dirty.server_model.state_dict().items(), clean.server_model.state_dict().values()):
        torch.testing.assert_close(got, want, msg=name)
    assert len(dirty.client_state(NODES[202]).buffer) == len(clean.client_state(NODES[202]).buffer) == 8


def test_a_one_sample_warm_up_batch_is_dropped_not_fatal(caplog):
    # Prepare: node 202 answers the warm-up with a single sample
    strategy, split = two_node_fsl_sage()

    def respond(msg):
        node = msg.metadata.dst_node_id
        n = 8 if node == 101 else 1
        z, y, _ = smashed_batches(NODES[node], n=n, batches=1)
        reply = TrainReply(partition_id=NODES[node], num_examples=50, smashed=(z, y, np.asarray([n], np.int64)))
        return reply_from(node, fit_reply_content(reply))

    # Execute
    with caplog.at_level(logging.WARNING, logger="flwr"):
        strategy.warm_up(ScriptedGrid(list(NODES), respond), ArrayRecord(split.client.state_dict()))
    # Assert: node 101 is registered, node 202 is not, and the log says why
    assert set(strategy.known_partitions().values()) == {101}
    assert any("dropped reply from node 202" in r.getMessage() for r in caplog.records)


def test_summary_logs_the_sampling_split_and_alignment_settings(caplog):
    # Prepare
    strategy, _ = two_node_fsl_sage(align_interval=7)
    # Execute: what Flower's start logs before round 1
    with caplog.at_level(logging.INFO, logger="flwr"):
        strategy.summary()
    # Assert: FedAvg's sampling lines, then the split and the alignment settings
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "Fraction: train (1.00)" in text
    assert "batch 8 | epochs 1 | upload every 1 steps" in text
    assert "Every 7 rounds | buffer 1000 samples" in text
    assert "Epochs 3 | batch 64" in text


def test_weighted_average_weights_by_sample_count_and_rounds_integer_counters():
    # Prepare: two states, weights 1 and 3; the counters average to 11.75
    spec = state_dict_spec({"w": torch.zeros(2), "count": torch.zeros((), dtype=torch.int64)})
    first = ArrayRecord({"w": Array(np.array([1.0, 3.0], np.float32)), "count": Array(np.array(11, np.int64))})
    second = ArrayRecord({"w": Array(np.array([3.0, 5.0], np.float32)), "count": Array(np.array(12, np.int64))})
    # Execute
    averaged = weighted_average([(first, 1), (second, 3)], spec).to_numpy_ndarrays()
    # Assert: weighted mean; the counter rounded (12), not truncated (11), and still int64
    np.testing.assert_allclose(averaged[0], [2.5, 4.5])
    assert averaged[0].dtype == np.float32
    assert averaged[1] == 12 and averaged[1].dtype == np.int64
