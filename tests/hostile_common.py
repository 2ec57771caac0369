"""What the generated hostile-reply tests share: the split, the strategies' keywords, honest replies, server state."""

from __future__ import annotations

import logging
import re
from collections import Counter

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from torch import nn

from fsl_sage_flwr.core.models import build_split_model
from fsl_sage_flwr.strategies import FSLSage
from fsl_sage_flwr.transport.local_training import LocalTraining

CUT = (16, 2, 2)
BATCH = 8
EXAMPLES = 40  # what nodes 101 and 202 declare (FSL-SAGE, CSE-FSL)
MAX_EXAMPLES = 1000
OWNERS = {101: 0, 202: 1}
STRANGERS = (303, 404, 505, 606)


def generated(max_examples: int):
    """Hypothesis settings: repeatable, no deadline (CI machines are shared)."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", autouse=True)
def torch_on_one_thread():
    """Tiny models step faster on one thread, and much faster on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class DropCounter(logging.Handler):
    """Count Flower's log lines that report a dropped reply, per node."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.nodes: Counter = Counter()
        self.last: dict[int, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = re.match(r"dropped reply from node (\d+)", record.getMessage())
        if match:
            self.nodes[int(match.group(1))] += 1
            self.last[int(match.group(1))] = record.getMessage()


@pytest.fixture(scope="module", name="drops")
def drop_lines():
    handler = DropCounter()
    logging.getLogger("flwr").addHandler(handler)
    yield handler
    logging.getLogger("flwr").removeHandler(handler)


def split_model():
    torch.manual_seed(0)
    return build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8))


def strategy_keywords(split) -> dict:
    return {
        "client_model": split.client,
        "server_model": split.server,
        "cut_shape": split.cut_shape,
        "num_classes": 10,
        "training": LocalTraining(batch_size=BATCH, upload_interval=1),
        "max_examples": MAX_EXAMPLES,
        "min_train_nodes": 1,
        "min_available_nodes": 2,
        "allow_partial_federation": True,  # claims of another node's partition are dropped, the run goes on
    }


def smashed(partition: int, server_round: int, batches: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng([partition, server_round])
    z = rng.normal(size=(BATCH * batches, *CUT)).astype(np.float32)
    y = rng.integers(0, 10, size=BATCH * batches).astype(np.int64)
    return z, y, np.full(batches, BATCH, dtype=np.int64)


def weights(model: nn.Module, factor: float) -> dict[str, np.ndarray]:
    return {k: (v * factor if v.is_floating_point() else v).numpy() for k, v in model.state_dict().items()}


def honest_factor(partition: int) -> float:
    """An honest node's arrays are the global ones scaled by this: a small update, different per partition."""
    return 1.0 + 0.01 * (partition + 1)


def huge(draw, bound: float) -> float:
    value = draw(st.one_of(st.just(1e30), st.floats(min_value=bound * 1.01, max_value=3e38)))
    return value * draw(st.sampled_from([1.0, -1.0]))


def server_state(strategy, arrays: ArrayRecord | None) -> dict[str, object]:
    """Everything a round leaves behind on the server, flattened."""
    state: dict[str, object] = {f"server.{k}": v for k, v in strategy.server_model.state_dict().items()}
    for index, slots in strategy.server_optimizer.state_dict()["state"].items():
        state.update({f"optimizer.{index}.{k}": v for k, v in slots.items()})
    if arrays is not None:
        state.update({f"averaged.{k}": v for k, v in arrays.to_torch_state_dict().items()})
    state["scale"] = strategy.activation_scale.snapshot()
    state["identities"] = strategy.identities.snapshot()
    state["update_guard"] = strategy.update_guard.snapshot()
    known = strategy.known_partitions() if isinstance(strategy, FSLSage) else {}
    for partition_id, node_id in known.items():
        client, status = strategy.client_state(partition_id), strategy.client_status(partition_id)
        state[f"slot.{node_id}"] = (partition_id, status.aux_pending, status.buffer_changed, len(client.buffer))
        state.update({f"buffer.{node_id}.{i}": t for i, t in enumerate(client.buffer.tensors())})
        state.update({f"aux.{node_id}.{k}": v for k, v in client.aux.state_dict().items()})
    return state


def assert_same_state(got: dict[str, object], want: dict[str, object]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(got[key], value), key
        else:
            assert got[key] == value, key
