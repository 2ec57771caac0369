"""Generated malformed FSL-SAGE and CSE-FSL replies: each is dropped and changes nothing.

A round's replies are those of node 101 plus up to
five malformed ones (from node 202, which holds partition 1, and from nodes
that never took part); the state after the round must equal, bit for bit, the
state after the round with node 101's reply alone (SplitFed:
``test_hostile_splitfed_replies.py``). ``pytest -s`` prints how many malformed
replies were tried and dropped.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Array, MetricRecord, RecordDict
from hostile_arrays import hostile_model_arrays
from hostile_common import (  # noqa: F401 (drop_lines, torch_on_one_thread: fixtures)
    EXAMPLES,
    MAX_EXAMPLES,
    OWNERS,
    STRANGERS,
    assert_same_state,
    drop_lines,
    generated,
    honest_factor,
    huge,
    server_state,
    smashed,
    split_model,
    strategy_keywords,
    torch_on_one_thread,
    weights,
)
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from fsl_sage_flwr.core.models import build_split_model
from fsl_sage_flwr.strategies import AlignmentSettings, FSLSage
from fsl_sage_flwr.strategies.cse_fsl import CSEFSL
from fsl_sage_flwr.transport.replies import TrainReply
from simulations.testing import fit_reply_content

pytestmark = pytest.mark.slow  # over a thousand generated replies per strategy: minutes

FIGURES: Counter = Counter()


# --------------------------------------------------------------- FSL-SAGE, CSE-FSL


def _reply(shared_model: nn.Module, node_id: int, server_round: int, partition: int | None = None) -> TrainReply:
    partition = OWNERS.get(node_id, 2) if partition is None else partition
    return TrainReply(
        partition_id=partition,
        num_examples=EXAMPLES,
        shared=weights(shared_model, honest_factor(partition)),
        smashed=smashed(partition, server_round),
    )


def _fsl_sage_base():
    split = split_model()
    strategy = FSLSage(
        shared_model=split.client,
        aux_factory=lambda: build_split_model("cnn", num_classes=10, input_shape=(1, 8, 8)).aux,
        alignment=AlignmentSettings(interval=100, epochs=1, batch_size=64),
        **strategy_keywords(split),
    )
    warm = [
        (n, fit_reply_content(TrainReply(partition_id=p, num_examples=EXAMPLES, smashed=smashed(p, 0, batches=1))))
        for n, p in OWNERS.items()
    ]
    strategy.accept_warm_up(warm)
    strategy.aggregate_replies(1, [(n, fit_reply_content(_reply(split.client, n, 1))) for n in OWNERS])
    return strategy


def _cse_fsl_base():
    split = split_model()
    shared = nn.ModuleDict({"client": split.client, "aux": split.aux})
    strategy = CSEFSL(shared_model=shared, **strategy_keywords(split))
    strategy.aggregate_replies(1, [(n, fit_reply_content(_reply(shared, n, 1))) for n in OWNERS])
    return strategy


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
        z.flat[draw(st.integers(0, z.size - 1))] = huge(draw, bound)
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
        z, y, sizes = smashed(partition, 2, batches=draw(st.integers(6, 9)))  # 40 examples allow 5
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


_BASES: dict[str, tuple] = {}


def _base(name: str, build: Callable[[], object]):
    """The strategy after round 1, and its state after a clean round 2 of node 101 alone."""
    if name not in _BASES:
        base = build()
        clean = copy.deepcopy(base)
        arrays, _ = clean.aggregate_replies(2, [(101, fit_reply_content(_reply(clean.shared_model, 101, 2)))])
        _BASES[name] = (base, server_state(clean, arrays))
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
        assert_same_state(server_state(strategy, arrays), clean_state)
        FIGURES[f"{name} tried"] += len(senders)
        FIGURES[f"{name} dropped"] += len(senders)

    check()
    print(f"\n{name}: {FIGURES[f'{name} tried']} malformed replies tried, {FIGURES[f'{name} dropped']} dropped")


# ------------------------------------------------------------ client-model arrays


@pytest.mark.parametrize("name,build", [("fsl-sage", _fsl_sage_base), ("cse-fsl", _cse_fsl_base)])
def test_hostile_client_model_arrays_never_reach_the_average(name, build, drops):
    base, clean_state = _base(name, build)
    sent = weights(base.shared_model, 1.0)

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
        assert_same_state(server_state(strategy, arrays), clean_state)
        FIGURES[f"{name} model tried"] += 1
        FIGURES[f"{name} model dropped"] += 1

    check()
    print(f"\n{name}: {FIGURES[f'{name} model tried']} hostile client models tried and dropped")


def test_zz_print_figures():
    """Print the totals (runs last in this module)."""
    tried = sum(v for k, v in FIGURES.items() if k.endswith(" tried"))
    dropped = sum(v for k, v in FIGURES.items() if k.endswith(" dropped"))
    kinds = ", ".join(f"{k[5:]} {v}" for k, v in sorted(FIGURES.items()) if k.startswith("kind "))
    print(f"\nmalformed replies: {tried} tried, {dropped} dropped ({kinds})")
