"""Faults injected into real runs of every split strategy: each is logged and the run goes on."""

from __future__ import annotations

import logging
import math
import tomllib
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict

from fsl_sage_flwr.app.client_app import app as client_app
from fsl_sage_flwr.app.results import read_results
from fsl_sage_flwr.app.server_app import app as server_app
from simulations.in_process import InProcessGrid

pytestmark = pytest.mark.e2e  # in-process runs of every split strategy, one per injected fault

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
NUM_NODES = 3
FAULTY_PARTITION = 2
FIRST_FAULTY_ROUND = 2  # the node behaves in round 1 (warm-up included), then goes bad
ROUNDS = 3
STRATEGIES = ["fsl-sage", "cse-fsl", "splitfed-ms", "splitfed-ss"]


def _floats(record: ArrayRecord, change: Callable[[np.ndarray], np.ndarray]) -> None:
    for key in list(record.keys()):
        values = record[key].numpy()
        if np.issubdtype(values.dtype, np.floating) and values.size:
            record[key] = Array(np.ascontiguousarray(change(values.copy())))


def _each_array_record(content: RecordDict, change: Callable[[np.ndarray], np.ndarray]) -> None:
    for record in content.array_records.values():
        _floats(record, change)


def _set_counts(content: RecordDict, key_names: tuple[str, ...], value: Callable[[int], int]) -> None:
    for record in list(content.metric_records.values()) + list(content.config_records.values()):
        for key in key_names:
            if key in record:
                record[key] = value(int(record[key]))


def _truncate(values: np.ndarray) -> np.ndarray:
    return values[:-1] if values.shape[0] > 1 else values.reshape(-1)[:0]


class NodeSilent(Exception):
    """Raised by a node that sends no reply; the grid below drops its error reply."""


def _crash(reply: Message) -> Message:
    raise RuntimeError("injected crash")


def _silence(reply: Message) -> Message:
    raise NodeSilent


#: A fault turns the faulty node's reply into what it sends instead.
FAULTS: dict[str, Callable[[Message], Message]] = {
    "nan-values": lambda r: (_each_array_record(r.content, lambda v: np.full_like(v, np.nan)), r)[1],
    "huge-finite-values": lambda r: (_each_array_record(r.content, lambda v: np.full_like(v, 1e30)), r)[1],
    "truncated-arrays": lambda r: (_each_array_record(r.content, _truncate), r)[1],
    "another-nodes-partition": lambda r: (
        _set_counts(r.content, ("partition-id",), lambda p: (p + 1) % NUM_NODES),
        r,
    )[1],
    "inflated-num-examples": lambda r: (
        _set_counts(r.content, ("num_examples", "num-examples"), lambda n: n * 1000),
        r,
    )[1],
    "crash": _crash,
    "silence": _silence,
}


class FaultyClientApp:
    """The package's ClientApp; one partition's replies from round 2 on are replaced by a fault."""

    def __init__(self, fault: Callable[[Message], Message]) -> None:
        self.fault = fault
        self.faulty_node: int | None = None
        self.injected = 0

    def __call__(self, message: Message, context: Context) -> Message:
        reply = client_app(message, context)
        if context.node_config["partition-id"] != FAULTY_PARTITION or _round_of(message) < FIRST_FAULTY_ROUND:
            return reply
        self.faulty_node = context.node_id
        self.injected += 1
        return self.fault(reply)


class SilenceAwareGrid(InProcessGrid):
    """An in-process grid on which a node that raised :class:`NodeSilent` never answers."""

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = super().pull_messages(message_ids)
        return [m for m in replies if not (m.has_error() and m.error.reason.startswith(NodeSilent.__name__))]


def _round_of(message: Message) -> int:
    for record in message.content.config_records.values():
        if "server-round" in record:
            return int(record["server-round"])
    return 0


def _config(tmp_path: Path, algorithm: str) -> dict:
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    config.update(
        {
            "algorithm": algorithm,
            "num-server-rounds": ROUNDS,
            "min-available-nodes": NUM_NODES,
            "align-interval": 2,
            "align-epochs": 2,
            "round-timeout": 30.0,
            "output-dir": str(tmp_path),
            "run-name": "run",
        }
    )
    return config


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("algorithm", STRATEGIES)
def test_an_injected_fault_is_logged_with_its_node_and_the_run_completes(tmp_path, caplog, algorithm, fault):
    # Prepare: three nodes; the third goes bad after round 1
    client = FaultyClientApp(FAULTS[fault])
    config = _config(tmp_path, algorithm)
    if fault == "another-nodes-partition":
        # An identity fault of the setup fails the run by default (tests/test_setup_runs.py);
        # a partial federation runs on without the node.
        config["allow-partial-federation"] = True
    grid = SilenceAwareGrid(client, NUM_NODES, config)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(config))
    # Execute
    with caplog.at_level(logging.WARNING, logger="flwr"):
        server_app(grid, context)
    # Assert: the fault happened, a warning names the node, every round was recorded with
    # a finite loss and an accuracy well above chance (10 classes)
    assert client.injected > 0 and client.faulty_node is not None
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(f"dropped reply from node {client.faulty_node}" in w for w in warnings), warnings[-5:]
    rows = read_results(tmp_path / "run" / "results.jsonl")
    assert [r["round"] for r in rows] == list(range(ROUNDS + 1))
    assert math.isfinite(rows[-1]["loss"]) and rows[-1]["accuracy"] > 0.3
