"""Generated malformed replies against every split strategy: each is dropped and changes nothing.

For FSL-SAGE and CSE-FSL a round's replies are those of node 101 plus up to
five malformed ones (from node 202, which holds partition 1, and from nodes
that never took part); the state after the round must equal, bit for bit, the
state after the round with node 101's reply alone. For SplitFed one reply of
node 202 (a step reply or its closing reply) is malformed; the state must equal
that of the round in which that reply never arrived. ``pytest -s`` prints how
many malformed replies were tried and dropped.
"""

from __future__ import annotations

import copy
import logging
import re
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from hostile_arrays import hostile_model_arrays
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from fsl_sage_flwr.core.models import build_split_model
from fsl_sage_flwr.strategies import AlignmentSettings, FSLSage
from fsl_sage_flwr.strategies.cse_fsl import CSEFSL
from fsl_sage_flwr.strategies.splitfed import SplitFed
from fsl_sage_flwr.transport.local_training import LocalTraining
from fsl_sage_flwr.transport.replies import TrainReply
from fsl_sage_flwr.transport.splitfed_step import smashed_arrays_record
from simulations.testing import fit_reply_content, reply_from

pytestmark = pytest.mark.slow  # over a thousand generated replies per strategy: minutes

CUT = (16, 2, 2)
BATCH = 8
EXAMPLES = 40  # what nodes 101 and 202 declare (FSL-SAGE, CSE-FSL)
SF_EXAMPLES = 16  # SplitFed: two batches of 8
MAX_EXAMPLES = 1000
OWNERS = {101: 0, 202: 1}
STRANGERS = (303, 404, 505, 606)
FIGURES: Counter = Counter()


def generated(max_examples: int):
    """Hypothesis settings: repeatable, no deadline (CI machines are shared)."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
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


@pytest.fixture(scope="module")
def drops():
    handler = DropCounter()
    logging.getLogger("flwr").addHandler(handler)
    yield handler
    logging.getLogger("flwr").removeHandler(handler)


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
        "max_examples": MAX_EXAMPLES,
        "min_train_nodes": 1,
        "min_available_nodes": 2,
        "allow_partial_federation": True,  # claims of another node's partition are dropped, the run goes on
    }


def _smashed(partition: int, server_round: int, batches: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng([partition, server_round])
    z = rng.normal(size=(BATCH * batches, *CUT)).astype(np.float32)
    y = rng.integers(0, 10, size=BATCH * batches).astype(np.int64)
    return z, y, np.full(batches, BATCH, dtype=np.int64)


def _weights(model: nn.Module, factor: float) -> dict[str, np.ndarray]:
    return {k: (v * factor if v.is_floating_point() else v).numpy() for k, v in model.state_dict().items()}


def _honest_factor(partition: int) -> float:
    """An honest node's arrays are the global ones scaled by this: a small update, different per partition."""
    return 1.0 + 0.01 * (partition + 1)


# --------------------------------------------------------------- FSL-SAGE, CSE-FSL


def _reply(shared_model: nn.Module, node_id: int, server_round: int, partition: int | None = None) -> TrainReply:
    partition = OWNERS.get(node_id, 2) if partition is None else partition
    return TrainReply(
        partition_id=partition,
        num_examples=EXAMPLES,
        shared=_weights(shared_model, _honest_factor(partition)),
        smashed=_smashed(partition, server_round),
    )


def _fsl_sage_base():
    split = _split()
    strategy = FSLSage(
        shared_model=split.client,
        aux_factory=lambda: build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8)).aux,
        alignment=AlignmentSettings(interval=100, epochs=1, batch_size=64),
        **_common(split),
    )
    warm = [
        (n, fit_reply_content(TrainReply(partition_id=p, num_examples=EXAMPLES, smashed=_smashed(p, 0, batches=1))))
        for n, p in OWNERS.items()
    ]
    strategy.accept_warm_up(warm)
    strategy.aggregate_replies(1, [(n, fit_reply_content(_reply(split.client, n, 1))) for n in OWNERS])
    return strategy


def _cse_fsl_base():
    split = _split()
    shared = nn.ModuleDict({"client": split.client, "aux": split.aux})
    strategy = CSEFSL(shared_model=shared, **_common(split))
    strategy.aggregate_replies(1, [(n, fit_reply_content(_reply(shared, n, 1))) for n in OWNERS])
    return strategy


def _huge(draw, bound: float) -> float:
    value = draw(st.one_of(st.just(1e30), st.floats(min_value=bound * 1.01, max_value=3e38)))
    return value * draw(st.sampled_from([1.0, -1.0]))


@st.composite
def bad_train_reply(draw, node_id: int, shared_model: nn.Module, bound: float) -> RecordDict:
    """One malformed round-2 reply of ``node_id`` (202 holds partition 1; others hold nothing)."""
    stranger = node_id not in OWNERS
    partition = draw(st.sampled_from([0, 1, 2, 3])) if stranger else 1
    reply = _reply(shared_model, node_id, 2, partition)
    z, y, sizes = (a.copy() for a in reply.smashed)
    kinds = [
        "huge",
        "nonfinite",
        "label",
        "empty",
        "batch-sizes",
        "z-dtype",
        "y-dtype",
        "z-shape",
        "too-many",
        "model-nonfinite",
        "model-shape",
        "model-missing",
        "partition",
        "num-examples",
        "float-metric",
        "status",
        "records",
        "metric-key",
        "corrupt-npy",
        "negative-metric",
    ]
    kind = draw(st.sampled_from(kinds))
    FIGURES[f"kind {kind}"] += 1
    changes: dict = {}
    if kind == "huge":
        z.flat[draw(st.integers(0, z.size - 1))] = _huge(draw, bound)
    elif kind == "nonfinite":
        z.flat[draw(st.integers(0, z.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    elif kind == "label":
        y[draw(st.integers(0, y.size - 1))] = draw(st.one_of(st.integers(-(2**62), -1), st.integers(10, 2**62)))
    elif kind == "empty":
        z, y, sizes = z[:0], y[:0], sizes[:0]
    elif kind == "batch-sizes":
        sizes = np.asarray(
            draw(st.sampled_from([[1, 15], [9, 7], [8, 9], [16], [8], [2**62, 2**62], [-8, 24]])), np.int64
        )
    elif kind == "z-dtype":
        z = z.astype(draw(st.sampled_from([np.float64, np.float16, np.int32])))
    elif kind == "y-dtype":
        y = y.astype(draw(st.sampled_from([np.int32, np.float32, np.uint8])))
    elif kind == "z-shape":
        z = z.reshape(draw(st.sampled_from([(16, 64), (16, 16, 4), (32, 8, 2, 2)])))
    elif kind == "too-many":
        z, y, sizes = _smashed(partition, 2, batches=draw(st.integers(6, 9)))  # 40 examples allow 5
    elif kind == "model-nonfinite":
        name = draw(st.sampled_from([k for k, v in reply.shared.items() if v.dtype.kind == "f"]))
        broken = reply.shared[name].copy()
        broken.flat[0] = draw(st.sampled_from([np.nan, np.inf]))
        changes["shared"] = {**reply.shared, name: broken}
    elif kind == "model-shape":
        name = draw(st.sampled_from(list(reply.shared)))
        changes["shared"] = {**reply.shared, name: np.zeros((3, 3), reply.shared[name].dtype)}
    elif kind == "model-missing":
        changes["shared"] = None
    elif kind == "partition":
        owned = [0] if stranger or partition == 1 else []
        changes["partition_id"] = draw(
            st.sampled_from(owned + [-1, 2**62, MAX_EXAMPLES] + ([] if stranger else [0, 2, 5]))
        )
    elif kind == "num-examples":
        low = [0, -3, MAX_EXAMPLES + 1]
        changes["num_examples"] = draw(st.sampled_from(low if stranger else low + [EXAMPLES + 1, EXAMPLES * 10]))
    content = fit_reply_content(TrainReply(**{**reply.__dict__, "smashed": (z, y, sizes), **changes}))
    arrays = content["fitres.parameters"]
    z_key = str(len(arrays.keys()) - 3)
    if kind == "float-metric":
        key = draw(st.sampled_from(["partition-id", "local-steps", "num_examples"]))
        value = draw(st.sampled_from([float(partition), True, partition + 0.5]))
        target = content["fitres.num_examples"] if key == "num_examples" else content["fitres.metrics"]
        target[key] = value if key != "num_examples" else float(EXAMPLES) if value is True else value
    elif kind == "status":
        content["fitres.status"]["code"] = draw(st.integers(1, 4))
    elif kind == "records":
        if draw(st.booleans()):
            content["extra"] = MetricRecord({"x": 1.0})
        else:
            del content[draw(st.sampled_from(["fitres.parameters", "fitres.metrics", "fitres.num_examples"]))]
    elif kind == "metric-key":
        content["fitres.metrics"][draw(st.sampled_from(["num-batches", "PARTITION-ID", "x"]))] = 1
    elif kind == "corrupt-npy":
        data = arrays[z_key].data
        cut = draw(st.integers(0, len(data) - 65))  # always shorter than a whole array
        arrays[z_key] = Array(dtype="", shape=(), stype="numpy.ndarray", data=data[:cut] + draw(st.binary(max_size=64)))
    elif kind == "negative-metric":
        content["fitres.metrics"][draw(st.sampled_from(["local-steps", "peak-memory-bytes"]))] = -1
    return content


def _state(strategy, arrays: ArrayRecord | None) -> dict[str, object]:
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


_BASES: dict[str, tuple] = {}


def _base(name: str, build: Callable[[], object]):
    """The strategy after round 1, and its state after a clean round 2 of node 101 alone."""
    if name not in _BASES:
        base = build()
        clean = copy.deepcopy(base)
        arrays, _ = clean.aggregate_replies(2, [(101, fit_reply_content(_reply(clean.shared_model, 101, 2)))])
        _BASES[name] = (base, _state(clean, arrays))
    return _BASES[name]


@pytest.mark.parametrize("name,build", [("fsl-sage", _fsl_sage_base), ("cse-fsl", _cse_fsl_base)])
def test_malformed_train_replies_are_dropped_and_change_nothing(name, build, drops):
    base, clean_state = _base(name, build)
    bound = base.activation_scale.bound()

    @generated(150)
    @given(data=st.data(), senders=st.lists(st.sampled_from((202, *STRANGERS)), min_size=1, max_size=5, unique=True))
    def check(data, senders):
        # Prepare: node 101's good reply among malformed ones, in a drawn order
        strategy = copy.deepcopy(base)
        replies = [(n, data.draw(bad_train_reply(n, strategy.shared_model, bound))) for n in senders]
        replies.insert(
            data.draw(st.integers(0, len(replies))), (101, fit_reply_content(_reply(strategy.shared_model, 101, 2)))
        )
        before = Counter(drops.nodes)
        # Execute: nothing may escape
        arrays, _ = strategy.aggregate_replies(2, replies)
        # Assert: one drop line per malformed reply, and the state of the clean round
        assert all(drops.nodes[n] - before[n] == 1 for n in senders), senders
        assert_same_state(_state(strategy, arrays), clean_state)
        FIGURES[f"{name} tried"] += len(senders)
        FIGURES[f"{name} dropped"] += len(senders)

    check()
    print(f"\n{name}: {FIGURES[f'{name} tried']} malformed replies tried, {FIGURES[f'{name} dropped']} dropped")


# ------------------------------------------------------------ client-model arrays


@pytest.mark.parametrize("name,build", [("fsl-sage", _fsl_sage_base), ("cse-fsl", _cse_fsl_base)])
def test_hostile_client_model_arrays_never_reach_the_average(name, build, drops):
    base, clean_state = _base(name, build)
    sent = _weights(base.shared_model, 1.0)

    @generated(40)
    @given(data=st.data())
    def check(data):
        # Prepare: node 101's good reply and node 202's with hostile client-model arrays, in a drawn order
        strategy = copy.deepcopy(base)
        honest = _reply(strategy.shared_model, 202, 2)
        shared = data.draw(hostile_model_arrays(honest.shared, sent, FIGURES))
        hostile = TrainReply(**{**honest.__dict__, "shared": shared})
        replies = [(101, fit_reply_content(_reply(strategy.shared_model, 101, 2))), (202, fit_reply_content(hostile))]
        if data.draw(st.booleans()):
            replies.reverse()
        before = Counter(drops.nodes)
        # Execute
        arrays, _ = strategy.aggregate_replies(2, replies)
        # Assert: node 202 dropped for its client model; the average is node 101's alone
        assert drops.nodes[202] - before[202] == 1 and drops.nodes[101] == before[101]
        assert "client-model" in drops.last[202]
        assert_same_state(_state(strategy, arrays), clean_state)
        FIGURES[f"{name} model tried"] += 1
        FIGURES[f"{name} model dropped"] += 1

    check()
    print(f"\n{name}: {FIGURES[f'{name} model tried']} hostile client models tried and dropped")


# --------------------------------------------------------------------- SplitFed


class SplitFedNodes:
    """Scripted SplitFed nodes 101 and 202; one reply may be replaced or left out."""

    def __init__(
        self, split, server_round: int, replace: tuple[int, Callable[[], Message | None]] | None = None
    ) -> None:
        self.split = split
        self.server_round = server_round
        self.replace = replace

    def get_node_ids(self) -> list[int]:
        return list(OWNERS)

    def send_and_receive(self, messages, *, timeout=None) -> list[Message]:
        replies = []
        for msg in messages:
            node, step = msg.metadata.dst_node_id, int(msg.content.config_records["config"]["step"])
            if node == 202 and self.replace is not None and self.replace[0] == step:
                reply = self.replace[1]()
                if reply is not None:
                    replies.append(reply)
                continue
            replies.append(reply_from(node, step_content(self.split, node, self.server_round, step), "train.splitstep"))
        return replies


def step_content(split, node: int, server_round: int, step: int, **metrics) -> RecordDict:
    """A good step reply (steps 0 and 1) or closing reply (step 2) of ``node``."""
    values = {"partition-id": OWNERS[node], "num-batches": 2, "num-examples": SF_EXAMPLES, **metrics}
    content = RecordDict({"metrics": MetricRecord(values)})
    if step < 2:
        z, y, _ = _smashed(OWNERS[node], server_round * 10 + step, batches=1)
        content["smashed"] = smashed_arrays_record(z, y, np.asarray([BATCH], np.int64))
    else:
        content["arrays"] = ArrayRecord(
            {k: torch.from_numpy(v) for k, v in _weights(split.client, _honest_factor(OWNERS[node])).items()}
        )
    return content


def run_splitfed_round(strategy: SplitFed, split, server_round: int, replace=None) -> ArrayRecord | None:
    """One SplitFed round through ``configure_train`` and ``aggregate_train``."""
    grid = SplitFedNodes(split, server_round, replace)
    closing = strategy.configure_train(server_round, ArrayRecord(split.client.state_dict()), ConfigRecord(), grid)
    arrays, _ = strategy.aggregate_train(server_round, grid.send_and_receive(closing))
    return arrays


@st.composite
def bad_step_reply(draw, split, bound: float) -> tuple[int, Callable[[], Message | None]]:
    """A step of node 202 in round 2 and a malformed reply for it."""
    step = draw(st.integers(0, 2))
    kinds = ["error", "partition", "num-examples", "num-batches", "float-metric", "records", "metric-key"]
    kinds += (
        ["huge", "nonfinite", "label", "empty", "batch-sizes", "z-dtype", "z-shape", "too-many"]
        if step < 2
        else ["model-nonfinite", "model-shape"]
    )
    kind = draw(st.sampled_from(kinds))
    FIGURES[f"kind {kind}"] += 1
    content = step_content(split, 202, 2, step)
    metrics = content["metrics"]
    if kind == "partition":
        metrics["partition-id"] = draw(st.sampled_from([0, 2, -1, 2**62]))
    elif kind == "num-examples":
        metrics["num-examples"] = draw(st.sampled_from([SF_EXAMPLES + 1, SF_EXAMPLES * 4, 0, MAX_EXAMPLES + 1]))
    elif kind == "num-batches":
        metrics["num-batches"] = draw(st.sampled_from([0, 3, 2**40] + ([1] if step else [])))
    elif kind == "float-metric":
        key = draw(st.sampled_from(["partition-id", "num-batches", "num-examples"]))
        metrics[key] = float(metrics[key]) + draw(st.sampled_from([0.0, 0.5]))
    elif kind == "records":
        content["config"] = ConfigRecord({"x": 1})
    elif kind == "metric-key":
        metrics["nan-metric"] = float("nan")
    elif kind == "model-nonfinite":
        arrays = content["arrays"]
        name = draw(st.sampled_from([k for k in arrays.keys() if arrays[k].dtype == "float32"]))
        broken = arrays[name].numpy().copy()
        broken.flat[0] = np.nan
        arrays[name] = Array(broken)
    elif kind == "model-shape":
        content["arrays"][draw(st.sampled_from(list(content["arrays"].keys())))] = Array(np.zeros((3, 3), np.float32))
    elif kind != "error":
        record = content["smashed"]
        z, y, sizes = (record[k].numpy().copy() for k in ("z", "y", "batch-sizes"))
        if kind == "huge":
            z.flat[draw(st.integers(0, z.size - 1))] = _huge(draw, bound)
        elif kind == "nonfinite":
            z.flat[draw(st.integers(0, z.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        elif kind == "label":
            y[draw(st.integers(0, y.size - 1))] = draw(st.sampled_from([-1, 10, 2**62]))
        elif kind == "empty":
            z, y, sizes = z[:0], y[:0], sizes[:0]
        elif kind == "batch-sizes":
            sizes = np.asarray(draw(st.sampled_from([[1], [7], [4, 4], [2**62]])), np.int64)
        elif kind == "z-dtype":
            z = z.astype(np.float64)
        elif kind == "z-shape":
            z = z.reshape(BATCH, 64)
        elif kind == "too-many":
            z, y, sizes = np.concatenate([z, z]), np.concatenate([y, y]), np.asarray([BATCH * 2], np.int64)
        content["smashed"] = smashed_arrays_record(z, y, sizes)
    if kind == "error":
        metadata = reply_from(202, RecordDict(), "train.splitstep").metadata
        return step, lambda: Message(error=Error(code=0, reason="client failed"), metadata=metadata)
    return step, lambda: reply_from(202, content, "train.splitstep")


@pytest.mark.parametrize("mode", ["ms", "ss"])
def test_malformed_splitfed_replies_are_dropped_and_change_nothing(mode, drops):
    name = f"splitfed-{mode}"
    split = _split()
    base = SplitFed(mode=mode, batch_size=BATCH, **_common(split))
    run_splitfed_round(base, split, 1)
    bound = base.activation_scale.bound()
    clean_states: dict[int, dict] = {}

    @generated(130)
    @given(bad=bad_step_reply(split, bound))
    def check(bad):
        # Prepare: the round without that reply, once per step
        step, _ = bad
        if step not in clean_states:
            clean = copy.deepcopy(base)
            clean_states[step] = _state(clean, run_splitfed_round(clean, split, 2, replace=(step, lambda: None)))
        strategy = copy.deepcopy(base)
        before = drops.nodes[202]
        # Execute: nothing may escape
        arrays = run_splitfed_round(strategy, split, 2, replace=bad)
        # Assert
        assert drops.nodes[202] - before == 1
        assert_same_state(_state(strategy, arrays), clean_states[step])
        FIGURES[f"{name} tried"] += 1
        FIGURES[f"{name} dropped"] += 1

    check()
    print(f"\n{name}: {FIGURES[f'{name} tried']} malformed replies tried, {FIGURES[f'{name} dropped']} dropped")


@pytest.mark.parametrize("mode", ["ms", "ss"])
def test_hostile_client_models_in_splitfed_closing_replies_never_reach_the_average(mode, drops):
    split = _split()
    base = SplitFed(mode=mode, batch_size=BATCH, **_common(split))
    run_splitfed_round(base, split, 1)
    clean = copy.deepcopy(base)
    clean_state = _state(clean, run_splitfed_round(clean, split, 2, replace=(2, lambda: None)))
    sent = _weights(split.client, 1.0)
    honest = _weights(split.client, _honest_factor(OWNERS[202]))

    @generated(20)
    @given(arrays=hostile_model_arrays(honest, sent, FIGURES))
    def check(arrays):
        # Prepare: node 202 closes its round with hostile client-model arrays
        content = step_content(split, 202, 2, 2)
        content["arrays"] = ArrayRecord({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
        strategy = copy.deepcopy(base)
        before = drops.nodes[202]
        # Execute
        averaged = run_splitfed_round(
            strategy, split, 2, replace=(2, lambda: reply_from(202, content, "train.splitstep"))
        )
        # Assert: dropped for its client model; the state of the round node 202 never closed
        assert drops.nodes[202] - before == 1 and "client-model" in drops.last[202]
        assert_same_state(_state(strategy, averaged), clean_state)
        FIGURES[f"splitfed-{mode} model tried"] += 1
        FIGURES[f"splitfed-{mode} model dropped"] += 1

    check()


def test_zz_print_figures():
    """Print the totals (runs last in this module)."""
    tried = sum(v for k, v in FIGURES.items() if k.endswith(" tried"))
    dropped = sum(v for k, v in FIGURES.items() if k.endswith(" dropped"))
    kinds = ", ".join(f"{k[5:]} {v}" for k, v in sorted(FIGURES.items()) if k.startswith("kind "))
    print(f"\nmalformed replies: {tried} tried, {dropped} dropped ({kinds})")
