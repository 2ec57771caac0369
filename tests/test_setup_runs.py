"""In-process runs of the real apps with one node set up wrong: the run fails in round 1, naming node and cause."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Context, Message

from fsl_sage_flwr.app.client_app import app as client_app
from fsl_sage_flwr.app.results import read_results
from fsl_sage_flwr.app.server_app import app as server_app
from fsl_sage_flwr.strategies.setup_drops import SetupDropError
from simulations.in_process import run_in_process
from simulations.testing import app_config

pytestmark = pytest.mark.e2e  # in-process runs of the real apps on digits


class MisconfiguredNode:
    """The real ClientApp; the node of partition 1 has its node config changed by ``change``."""

    def __init__(self, change: Callable[[dict], None]) -> None:
        self.change = change
        self.node_id: int | None = None

    def __call__(self, message: Message, context: Context) -> Message:
        if context.node_config.get("partition-id") == 1 or context.node_id == self.node_id:
            self.node_id = context.node_id
            config = dict(context.node_config)
            self.change(config)
            context.node_config = config
        return client_app(message, context)


def _bad_labels(folder) -> Callable[[dict], None]:
    folder.mkdir()
    x = np.random.default_rng(0).normal(size=(40, 1, 8, 8)).astype(np.float32)
    np.savez(folder / "train.npz", x=x, y=np.where(np.arange(40) == 3, 12, np.arange(40) % 10))
    return lambda config: config.update({"data-dir": str(folder)})


def _config(tmp_path, **changes) -> dict:
    return app_config(tmp_path, num_server_rounds=2, min_available_nodes=3, **changes)


@pytest.mark.parametrize("algorithm", ["fsl-sage", "fedavg", "splitfed-ss"])
def test_a_node_with_labels_out_of_range_fails_round_one_naming_it(tmp_path, algorithm):
    # Prepare
    node = MisconfiguredNode(_bad_labels(tmp_path / "node"))
    # Execute
    with pytest.raises(
        SetupDropError, match=r"round 1: .*\[labels\]: labels out of range: found 12, num_classes 10"
    ) as err:
        run_in_process(server_app, node, _config(tmp_path, algorithm=algorithm), num_nodes=3)
    # Assert: the node is named, and no round was trained (round 0's row at most)
    assert f"node {node.node_id}" in str(err.value)
    path = tmp_path / "run" / "results.jsonl"
    assert all(row["round"] == 0 for row in (read_results(path) if path.exists() else []))


def test_a_node_without_a_partition_id_fails_round_one_naming_it(tmp_path):
    node = MisconfiguredNode(lambda config: config.pop("partition-id"))
    with pytest.raises(SetupDropError, match=r"round 1: .*\[identity\]: node config has no 'partition-id'"):
        run_in_process(server_app, node, _config(tmp_path), num_nodes=3)


def test_two_nodes_with_one_partition_id_fail_the_run_naming_both(tmp_path):
    # Prepare: the node of partition 1 says it is partition 0
    node = MisconfiguredNode(lambda config: config.update({"partition-id": 0}))
    # Execute
    with pytest.raises(SetupDropError, match=r"partition-id 0 is claimed by nodes \d+ and \d+") as err:
        run_in_process(server_app, node, _config(tmp_path), num_nodes=3)
    # Assert: the one node with partition 0 and the misconfigured one
    assert str(node.node_id) in str(err.value)


def test_with_partial_federation_the_run_completes_and_logs_the_summary(tmp_path, caplog):
    # Prepare
    node = MisconfiguredNode(_bad_labels(tmp_path / "node"))
    # Execute
    with caplog.at_level(logging.WARNING, logger="flwr"):
        run_in_process(server_app, node, _config(tmp_path, allow_partial_federation=True), num_nodes=3)
    # Assert: two rounds trained on the other nodes; the summary names the dropped one
    assert read_results(tmp_path / "run" / "results.jsonl")[-1]["round"] == 2
    summary = [r.getMessage() for r in caplog.records if r.getMessage().strip().startswith(f"node {node.node_id}")]
    assert summary and "labels out of range: found 12, num_classes 10" in summary[0]
    assert summary[0].endswith("never contributed")
