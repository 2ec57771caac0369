"""Uploaded labels on the wire: the split's declared shape and dtype, classes in range, floats finite."""

from __future__ import annotations

import copy
import logging
import re

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict
from loss_tasks import TOKENS, task_data, task_spec

from fsl_sage_flwr import LocalTraining, SetupDropError, SetupError
from fsl_sage_flwr.transport.errors import MalformedReplyError
from fsl_sage_flwr.transport.replies import TrainReply
from fsl_sage_flwr.transport.splitfed_step import parse_smashed, smashed_arrays_record
from fsl_sage_flwr.transport.uploads import pack_uploads
from simulations.testing import fit_reply_content

TRAINING = LocalTraining(batch_size=16, upload_interval=1, seed=3)
NODE = 202


def _reply(strategy, z: torch.Tensor, y: np.ndarray) -> TrainReply:
    """Node 202's CSE-FSL reply: its unchanged shared model, and ``z`` with labels ``y`` in two batches."""
    shared = {k: v.detach().numpy().copy() for k, v in strategy.shared_model.state_dict().items()}
    half = len(y) // 2
    z_only, _, sizes = pack_uploads([(z[:half], torch.zeros(half)), (z[half:], torch.zeros(half))], strategy.cut_shape)
    # The labels go as given: a hostile or misconfigured client need not cast them as pack_uploads does.
    smashed = (z_only, np.ascontiguousarray(y), sizes)
    return TrainReply(partition_id=1, num_examples=64, shared=shared, smashed=smashed, local_steps=4)


def _state(strategy) -> dict:
    return copy.deepcopy({**strategy.server_model.state_dict(), **strategy.identities.state_dict()})


def _labels(task: str, case: str) -> np.ndarray:
    y = task_data(task, seed=5)[1][:32]
    return {
        "fits": y,
        "one per sample": y[:, 0],
        "float classes": y.astype(np.float32),
        "class out of range": np.where(y == 0, 5, y),
        "NaN target": np.where(np.arange(y.size).reshape(y.shape) == 3, np.nan, y).astype(np.float32),
        "integer targets": np.round(y).astype(np.int64),
        "float64 targets": y.astype(np.float64),
    }[case]


@pytest.mark.parametrize(
    ("task", "case", "reason"),
    [
        ("tokens", "one per sample", r"labels have shape \(\) and dtype int64 per sample, expected \(4,\) int64"),
        ("tokens", "float classes", r"labels have shape \(4,\) and dtype float32 per sample, expected \(4,\) int64"),
        ("tokens", "class out of range", r"labels outside \[0, 5\): found 5"),
        ("regression", "NaN target", r"labels hold NaN or inf"),
        ("regression", "integer targets", r"dtype int64 per sample, expected \(2,\) float32"),
        ("regression", "float64 targets", r"dtype float64 per sample, expected \(2,\) float32"),
    ],
)
def test_a_reply_whose_labels_do_not_fit_the_split_is_dropped_naming_node_and_reason(caplog, task, case, reason):
    # Prepare
    strategy = task_spec(task).strategy(algorithm="cse-fsl", training=TRAINING)
    with torch.no_grad():
        z = strategy.client_model(torch.from_numpy(task_data(task, seed=5)[0][:32]))
    before = _state(strategy)
    content = fit_reply_content(_reply(strategy, z, _labels(task, case)))
    # Execute: a setup fault repeats every round, so by default it stops the run
    with (
        caplog.at_level(logging.WARNING, logger="flwr"),
        pytest.raises(SetupDropError, match=rf"node {NODE} \[labels\]"),
    ):
        strategy.aggregate_replies(1, [(NODE, content)])
    # Assert: dropped with one line naming the node and the reason, a labels fault; nothing changed
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dropped reply")]
    assert len(lines) == 1
    assert lines[0].startswith(f"dropped reply from node {NODE}: ")
    assert re.search(reason, lines[0])
    assert strategy.drops.nodes[NODE].setup_kind == "labels"
    after = _state(strategy)
    assert after.keys() == before.keys()
    assert all(torch.equal(torch.as_tensor(after[k]), torch.as_tensor(before[k])) for k in before)


@pytest.mark.parametrize("task", ["tokens", "regression"])
def test_a_reply_whose_labels_fit_trains_the_server(task):
    # Prepare: the same harness, labels as declared
    strategy = task_spec(task).strategy(algorithm="cse-fsl", training=TRAINING)
    with torch.no_grad():
        z = strategy.client_model(torch.from_numpy(task_data(task, seed=5)[0][:32]))
    before = copy.deepcopy(strategy.server_model.state_dict())
    content = fit_reply_content(_reply(strategy, z, _labels(task, "fits")))
    # Execute
    arrays, _ = strategy.aggregate_replies(1, [(NODE, content)])
    # Assert
    assert arrays is not None
    after = strategy.server_model.state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in before)


def test_a_splitfed_step_with_labels_of_another_shape_is_refused():
    # Prepare
    labels = task_spec("tokens").objective.labels
    z = np.zeros((4, TOKENS, 16), dtype=np.float32)
    record = smashed_arrays_record(z, np.zeros((4,), dtype=np.int64), np.asarray([4]))
    # Execute / Assert
    with pytest.raises(MalformedReplyError, match=r"labels have shape \(\) .* expected \(4,\) int64"):
        parse_smashed(record, cut_shape=(TOKENS, 16), labels=labels, max_samples=4)


def test_a_node_whose_labels_do_not_fit_fails_its_setup_in_one_line():
    # Prepare
    spec = task_spec("tokens")
    x, y = task_data("tokens", seed=0)
    context = Context(1, 1, {"partition-id": 0, "num-partitions": 2}, RecordDict(), {})
    # Execute / Assert: another shape is refused as data; a class out of range as a labels fault
    with pytest.raises(ValueError, match=r"labels have shape \(\) and dtype int64 per sample, the split declares"):
        spec.client((x, y[:, 0]), context)
    with pytest.raises(SetupError, match=r"setup error \(labels\): labels out of range: found 5, num_classes 5"):
        spec.client((x, y + 1), context)
