"""Generated malformed SplitFed replies (both modes): each is dropped and changes nothing.

One reply of node 202 (a step reply or its closing reply) is malformed; the
state after the round must equal, bit for bit, that of the round in which that
reply never arrived. ``pytest -s`` prints how many malformed replies were tried
and dropped.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from hostile_arrays import hostile_model_arrays
from hostile_common import (  # noqa: F401 (drop_lines, torch_on_one_thread: fixtures)
    BATCH,
    MAX_EXAMPLES,
    OWNERS,
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

from fsl_sage_flwr.strategies.splitfed import SplitFed
from fsl_sage_flwr.transport.splitfed_step import smashed_arrays_record
from simulations.testing import reply_from

pytestmark = pytest.mark.slow  # hundreds of generated replies per mode: minutes

SF_EXAMPLES = 16  # two batches of 8
FIGURES: Counter = Counter()


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
        z, y, _ = smashed(OWNERS[node], server_round * 10 + step, batches=1)
        content["smashed"] = smashed_arrays_record(z, y, np.asarray([BATCH], np.int64))
    else:
        content["arrays"] = ArrayRecord(
            {k: torch.from_numpy(v) for k, v in weights(split.client, honest_factor(OWNERS[node])).items()}
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
            z.flat[draw(st.integers(0, z.size - 1))] = huge(draw, bound)
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
    split = split_model()
    base = SplitFed(mode=mode, batch_size=BATCH, **strategy_keywords(split))
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
            clean_states[step] = server_state(clean, run_splitfed_round(clean, split, 2, replace=(step, lambda: None)))
        strategy = copy.deepcopy(base)
        before = drops.nodes[202]
        # Execute: nothing may escape
        arrays = run_splitfed_round(strategy, split, 2, replace=bad)
        # Assert
        assert drops.nodes[202] - before == 1
        assert_same_state(server_state(strategy, arrays), clean_states[step])
        FIGURES[f"{name} tried"] += 1
        FIGURES[f"{name} dropped"] += 1

    check()
    print(f"\n{name}: {FIGURES[f'{name} tried']} malformed replies tried, {FIGURES[f'{name} dropped']} dropped")


@pytest.mark.parametrize("mode", ["ms", "ss"])
def test_hostile_client_models_in_splitfed_closing_replies_never_reach_the_average(mode, drops):
    split = split_model()
    base = SplitFed(mode=mode, batch_size=BATCH, **strategy_keywords(split))
    run_splitfed_round(base, split, 1)
    clean = copy.deepcopy(base)
    clean_state = server_state(clean, run_splitfed_round(clean, split, 2, replace=(2, lambda: None)))
    sent = weights(split.client, 1.0)
    honest = weights(split.client, honest_factor(OWNERS[202]))

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
        assert_same_state(server_state(strategy, averaged), clean_state)
        FIGURES[f"splitfed-{mode} model tried"] += 1
        FIGURES[f"splitfed-{mode} model dropped"] += 1

    check()


def test_zz_print_figures():
    """Print the totals (runs last in this module)."""
    tried = sum(v for k, v in FIGURES.items() if k.endswith(" tried"))
    dropped = sum(v for k, v in FIGURES.items() if k.endswith(" dropped"))
    kinds = ", ".join(f"{k[5:]} {v}" for k, v in sorted(FIGURES.items()) if k.startswith("kind "))
    print(f"\nmalformed replies: {tried} tried, {dropped} dropped ({kinds})")
