"""An FSL-SAGE run on digits in which one node uploads a huge activation for one round."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from flwr.app import Array, Context, Message

from fsl_sage_flwr.app.client_app import app as client_app
from fsl_sage_flwr.app.results import read_results
from fsl_sage_flwr.app.server_app import app as server_app
from simulations.in_process import run_in_process
from simulations.testing import app_config

pytestmark = pytest.mark.e2e  # an in-process run of the real apps

POISONED_PARTITION = 2
POISONED_ROUND = 3


class PoisoningClientApp:
    """The real ClientApp; one partition's training reply of one round carries ``z[0] = 1e30``."""

    def __init__(self) -> None:
        self.poisoned_node: int | None = None

    def __call__(self, message: Message, context: Context) -> Message:
        reply = client_app(message, context)
        config = message.content.config_records["fitins.config"]
        if context.node_config["partition-id"] == POISONED_PARTITION and config["server-round"] == POISONED_ROUND:
            arrays = reply.content.array_records["fitres.parameters"]
            z_key = str(len(arrays.keys()) - 3)
            z = arrays[z_key].numpy().copy()
            z.flat[0] = 1e30  # finite, so every contract check of the wire passes
            arrays[z_key] = Array(z)
            self.poisoned_node = context.node_id
        return reply


def _run(tmp_path, client) -> list[dict]:
    settings = {"num_server_rounds": 6, "align_interval": 3, "align_epochs": 10, "min_available_nodes": 4}
    run_in_process(server_app, client, app_config(tmp_path, **settings), num_nodes=4)
    return read_results(tmp_path / "run" / "results.jsonl")


def test_one_huge_upload_is_dropped_and_accuracy_stays_on_course(tmp_path, caplog):
    # Prepare: a clean run with the same seed
    clean = _run(tmp_path / "clean", client_app)
    poisoning = PoisoningClientApp()
    # Execute
    with caplog.at_level(logging.WARNING, logger="flwr"):
        poisoned = _run(tmp_path / "poisoned", poisoning)
    # Assert: the poisoned reply was dropped with a line naming its node and the reason
    assert poisoning.poisoned_node is not None
    dropped = [r.getMessage() for r in caplog.records if "dropped reply from node" in r.getMessage()]
    assert len(dropped) == 1, dropped
    assert f"node {poisoning.poisoned_node} (partition {POISONED_PARTITION})" in dropped[0]
    assert "|z| = 1e+30" in dropped[0]
    # Assert: accuracy stays within a few points of the clean run, far above chance (10%)
    accuracy = np.asarray([r["accuracy"] for r in poisoned])
    reference = np.asarray([r["accuracy"] for r in clean])
    print(f"\nfinal accuracy: clean {reference[-1]:.4f}, poisoned {accuracy[-1]:.4f}")
    assert np.all(accuracy[POISONED_ROUND:] >= reference[POISONED_ROUND:] - 0.05), (accuracy, reference)
    assert accuracy[-1] >= 0.7
