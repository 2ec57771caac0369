"""The reply guards survive a checkpoint: a restored strategy refuses what the original refuses."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import RecordDict
from torch import nn

from fsl_sage_flwr.core.models import build_split_model
from fsl_sage_flwr.strategies import AlignmentSettings, FSLSage
from fsl_sage_flwr.strategies.cse_fsl import CSEFSL
from fsl_sage_flwr.transport.errors import MalformedReplyError
from fsl_sage_flwr.transport.guard import ActivationScale, IdentityRegistry, UploadLimits
from fsl_sage_flwr.transport.local_training import LocalTraining
from fsl_sage_flwr.transport.replies import TrainReply
from simulations.testing import fit_reply_content

CUT = (16, 2, 2)
BATCH = 8
DECLARED = 20  # the samples each node declares first
OWNERS = {101: 0, 202: 1}  # node id -> partition id
STRANGER = 303


def _roundtrip(state: object) -> object:
    """What ``state`` reads back as from a checkpoint file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _batch(peak: float) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([[peak, 0.5]]), torch.tensor([0])


# ------------------------------------------------------------------ the guards alone


def test_activation_scale_state_survives_a_checkpoint_and_restores_exactly():
    # Prepare: a scale over a window of 3 that has seen four batches
    limits = UploadLimits(max_abs=1e4, factor=10.0, window=3)
    scale = ActivationScale(limits)
    scale.accept([_batch(2.0), _batch(-3.0), _batch(4.0), _batch(5.0)])
    restored = ActivationScale(limits)
    # Execute
    restored.load_state_dict(_roundtrip(scale.state_dict()))
    # Assert: same values, same bound, and the window still drops the oldest
    assert restored.snapshot() == scale.snapshot() == (3.0, 4.0, 5.0)
    assert restored.bound() == scale.bound() == 40.0
    with pytest.raises(MalformedReplyError, match="above the bound 40"):
        restored.check([_batch(41.0)])
    restored.accept([_batch(6.0)])
    assert restored.snapshot() == (4.0, 5.0, 6.0)


def test_identity_registry_state_survives_a_checkpoint_and_restores_exactly():
    # Prepare: two nodes, one with a 63-bit node id as Flower draws them
    registry = IdentityRegistry(max_partitions=10)
    registry.register(2**63 - 1, 3, DECLARED)
    registry.register(101, 0, 40)
    restored = IdentityRegistry(max_partitions=10)
    # Execute
    restored.load_state_dict(_roundtrip(registry.state_dict()))
    # Assert
    assert restored.state_dict() == registry.state_dict()
    assert restored.snapshot() == registry.snapshot()
    for claim, message in (((2**63 - 1, 3, 1000), "exceeds the 20 first declared"), ((101, 5, 10), "node's 0")):
        for guard in (registry, restored):
            with pytest.raises(MalformedReplyError, match=message):
                guard.check(*claim)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda s: s.pop("recent"), "wrong keys"),
        (lambda s: s.update(extra=1), "wrong keys"),
        (lambda s: s["limits"].update(window=256), "saved with limits"),
        (lambda s: s["limits"].pop("factor"), "limits state has wrong keys"),
        (lambda s: s.update(recent=(1.0,)), "list of finite numbers"),
        (lambda s: s.update(recent=[1.0, float("nan")]), "list of finite numbers"),
        (lambda s: s.update(recent=[1.0, -2.0]), "list of finite numbers"),
        (lambda s: s.update(recent=[True]), "list of finite numbers"),
        (lambda s: s.update(recent=[1.0] * 9), "more than the window of 8"),
    ],
)
def test_activation_scale_refuses_a_state_that_does_not_fit(change, message):
    # Prepare
    limits = UploadLimits(window=8)
    saved = ActivationScale(limits)
    saved.accept([_batch(2.0)])
    state = saved.state_dict()
    change(state)
    scale = ActivationScale(limits)
    scale.accept([_batch(7.0)])
    # Execute / Assert: refused, and nothing changed
    with pytest.raises(ValueError, match=message):
        scale.load_state_dict(state)
    assert scale.snapshot() == (7.0,)


@pytest.mark.parametrize(
    "state,message",
    [
        ([], "must be a dict"),
        ({"nodes": []}, "wrong keys"),
        ({"max_partitions": 20, "nodes": []}, "saved with max_partitions=20"),
        ({"max_partitions": 10, "nodes": {}}, "must be a list"),
        ({"max_partitions": 10, "nodes": [[1, 2]]}, "is not \\[node_id"),
        ({"max_partitions": 10, "nodes": [[1, 2, 3.0]]}, "is not \\[node_id"),
        ({"max_partitions": 10, "nodes": [[1, -2, 3]]}, "is not \\[node_id"),
        ({"max_partitions": 10, "nodes": [[1, 10, 3]]}, "out of range"),
        ({"max_partitions": 10, "nodes": [[1, 2, 3], [1, 4, 3]]}, "names node 1 twice"),
    ],
)
def test_identity_registry_refuses_a_state_that_does_not_fit(state, message):
    # Prepare
    registry = IdentityRegistry(max_partitions=10)
    registry.register(7, 1, DECLARED)
    # Execute / Assert: refused, and nothing changed
    with pytest.raises(ValueError, match=message):
        registry.load_state_dict(state)
    assert registry.state_dict() == {"max_partitions": 10, "nodes": [[7, 1, DECLARED]]}


def test_a_new_node_id_takes_over_a_restored_identity_with_its_bounds_until_its_node_is_heard_from():
    # Prepare: a registry restored from a checkpoint of nodes 101 and 202
    saved = IdentityRegistry(max_partitions=10)
    for node_id, partition_id in OWNERS.items():
        saved.register(node_id, partition_id, DECLARED)
    registry = IdentityRegistry(max_partitions=10)
    registry.load_state_dict(_roundtrip(saved.state_dict()))
    # Execute: node 101 is heard from again; partition 1 comes back under node id 909
    registry.register(101, 0, DECLARED)
    with pytest.raises(MalformedReplyError, match="exceeds the 20 first declared"):
        registry.check(909, 1, DECLARED + 1)
    registry.check(909, 1, DECLARED)
    registry.register(909, 1, DECLARED)
    # Assert: 909 holds 202's identity; neither partition can be taken any more
    assert registry.state_dict()["nodes"] == [[101, 0, DECLARED], [909, 1, DECLARED]]
    for node_id, partition_id in ((STRANGER, 0), (STRANGER, 1), (202, 1)):
        with pytest.raises(MalformedReplyError, match="belongs to node"):
            registry.check(node_id, partition_id, 1)


# ------------------------------------------------------------- through the strategies


def _split():
    torch.manual_seed(0)
    return build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8))


def _common(split) -> dict:
    return {
        "client_model": split.client,
        "server_model": split.server,
        "cut_shape": split.cut_shape,
        "num_classes": 10,
        "training": LocalTraining(batch_size=BATCH, upload_interval=1),
        "max_examples": 1000,
        "min_train_nodes": 1,
        "min_available_nodes": 2,
        "allow_partial_federation": True,  # hostile claims of a partition are dropped, the run goes on
    }


def _weights(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in model.state_dict().items()}


def _content(
    shared: nn.Module | None,
    node_id: int,
    server_round: int,
    *,
    partition: int | None = None,
    peak: float | None = None,
    batches: int = 2,
    **changes: object,
) -> RecordDict:
    """A reply of ``node_id`` with batches of N(0, 1) activations (largest |z| about 3, or ``peak``)."""
    partition = OWNERS.get(node_id, 2) if partition is None else partition
    rng = np.random.default_rng([partition, server_round])
    z = rng.normal(size=(batches * BATCH, *CUT)).astype(np.float32)
    if peak is not None:
        z.flat[0] = peak
    y = rng.integers(0, 10, size=batches * BATCH).astype(np.int64)
    fields = {
        "partition_id": partition,
        "num_examples": DECLARED,
        "shared": _weights(shared) if shared is not None else None,
        "smashed": (z, y, np.full(batches, BATCH, dtype=np.int64)),
    }
    return fit_reply_content(TrainReply(**{**fields, **changes}))


def _fsl_sage(trained: bool) -> FSLSage:
    split = _split()
    strategy = FSLSage(
        shared_model=split.client,
        aux_factory=lambda: build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8)).aux,
        alignment=AlignmentSettings(interval=100, epochs=1, batch_size=64),
        **_common(split),
    )
    if trained:
        strategy.accept_warm_up([(n, _content(None, n, 0, batches=1)) for n in OWNERS])
        strategy.aggregate_replies(1, [(n, _content(split.client, n, 1)) for n in OWNERS])
    return strategy


def _cse_fsl(trained: bool) -> CSEFSL:
    split = _split()
    strategy = CSEFSL(shared_model=nn.ModuleDict({"client": split.client, "aux": split.aux}), **_common(split))
    if trained:
        strategy.aggregate_replies(1, [(n, _content(strategy.shared_model, n, 1)) for n in OWNERS])
    return strategy


def _hostile_rounds(shared: nn.Module) -> list[list[tuple[int, RecordDict]]]:
    """Rounds 2 to 4: node 101 replies well; 202 and a stranger send what the guards must refuse."""
    return [
        [(101, _content(shared, 101, 2)), (202, _content(shared, 202, 2, peak=1e5))],
        [(101, _content(shared, 101, 3)), (202, _content(shared, 202, 3, num_examples=1000))],
        [
            (101, _content(shared, 101, 4)),
            (202, _content(shared, 202, 4, partition=0)),
            (STRANGER, _content(shared, STRANGER, 4, partition=0)),
        ],
    ]


class _Drops(logging.Handler):
    """The reasons Flower's log gives for dropped replies, in order."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if re.match(r"dropped reply from node \d+", message):
            self.reasons.append(message)


def _run(strategy, rounds: list[list[tuple[int, RecordDict]]]) -> list[str]:
    handler = _Drops()
    logging.getLogger("flwr").addHandler(handler)
    try:
        for server_round, replies in enumerate(rounds, start=2):
            strategy.aggregate_replies(server_round, replies)
    finally:
        logging.getLogger("flwr").removeHandler(handler)
    return handler.reasons


def _guards(strategy) -> dict[str, object]:
    state = strategy.state_dict()
    return {key: state[key] for key in ("activation_scale", "identities", "update_guard")}


@pytest.mark.parametrize("build", [_fsl_sage, _cse_fsl], ids=["fsl-sage", "cse-fsl"])
def test_a_restored_strategy_refuses_the_hostile_replies_the_original_refuses(build: Callable[[bool], object]):
    # Prepare: a strategy after round 1, and a fresh one loaded from its checkpoint state
    original = build(True)
    restored = build(False)
    restored.load_state_dict(_roundtrip(original.state_dict()))
    assert _guards(restored) == _guards(original)
    assert restored.activation_scale.bound() < 1e3
    assert restored.update_guard.snapshot()  # round 1's reference came along
    # Execute: the same hostile rounds on both
    original_drops = _run(original, _hostile_rounds(original.shared_model))
    restored_drops = _run(restored, _hostile_rounds(original.shared_model))
    # Assert: the same replies refused for the same reasons, and the same guard state after
    assert restored_drops == original_drops
    assert len(original_drops) == 4
    assert "above the bound" in original_drops[0]
    assert "exceeds the 20 first declared" in original_drops[1]
    assert [reason.split(":")[0] for reason in original_drops[2:]] == [
        "dropped reply from node 202 (partition 1)",
        f"dropped reply from node {STRANGER}",
    ]
    assert all("partition-id 0 belongs to node 101" in reason for reason in original_drops[2:])
    assert _guards(restored) == _guards(original)


def test_a_server_state_without_the_update_guard_is_refused():
    # Prepare: a state saved before client-model updates were bounded
    state = _cse_fsl(True).state_dict()
    del state["update_guard"]
    # Execute / Assert
    with pytest.raises(ValueError, match=r"without \['update_guard'\]"):
        _cse_fsl(False).load_state_dict(state)


def test_a_server_state_without_guards_is_refused():
    # Prepare: what a checkpoint of the earlier format holds
    state = _cse_fsl(True).state_dict()
    del state["activation_scale"], state["identities"]
    # Execute / Assert
    with pytest.raises(ValueError, match="older checkpoint"):
        _cse_fsl(False).load_state_dict(state)


def test_a_resumed_fsl_sage_server_lets_a_client_back_under_a_new_node_id_within_its_bounds():
    # Prepare: a server restored from a checkpoint of nodes 101 and 202
    restored = _fsl_sage(False)
    restored.load_state_dict(_roundtrip(_fsl_sage(True).state_dict()))
    # Execute: partition 1 warms up again under node ids 909 (claiming too much) and 910
    restored.accept_warm_up(
        [
            (909, _content(None, 909, 0, partition=1, num_examples=1000, batches=1)),
            (910, _content(None, 910, 0, partition=1, batches=1)),
        ]
    )
    # Assert: 910 holds 202's identity and slot; 909 and 202 may not claim partition 1 any more
    assert restored.is_registered(910) and not restored.is_registered(909)
    assert restored.identities.state_dict()["nodes"] == [[101, 0, DECLARED], [910, 1, DECLARED]]
    for node_id in (909, 202):
        with pytest.raises(MalformedReplyError, match="belongs to node 910"):
            restored.parse_reply(node_id, _content(restored.shared_model, node_id, 2, partition=1), expect_model=True)
