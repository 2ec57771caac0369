"""An FSL-SAGE run on digits in which one node returns its client model times 1e30 every round."""

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

pytestmark = pytest.mark.e2e  # two in-process runs of the real apps

HOSTILE_PARTITION = 3
SMASHED_KEYS = 3  # a train reply's last arrays: z, y and the batch sizes


class ScalingClientApp:
    """The real ClientApp; one partition's train replies carry its client-model arrays times 1e30."""

    def __init__(self) -> None:
        self.hostile_node: int | None = None
        self.scaled_replies = 0

    def __call__(self, message: Message, context: Context) -> Message:
        reply = client_app(message, context)
        arrays = reply.content.array_records.get("fitres.parameters")
        model_keys = list(arrays.keys())[:-SMASHED_KEYS] if arrays is not None else []
        if context.node_config["partition-id"] == HOSTILE_PARTITION and model_keys:
            for key in model_keys:
                values = arrays[key].numpy()
                if values.dtype.kind == "f":
                    arrays[key] = Array(values * values.dtype.type(1e30))  # finite: every wire check passes
            self.hostile_node = context.node_id
            self.scaled_replies += 1
        return reply


def _run(tmp_path, client) -> list[dict]:
    settings = {"num_server_rounds": 3, "min_available_nodes": 5, "align_epochs": 5}
    run_in_process(server_app, client, app_config(tmp_path, **settings), num_nodes=5)
    return read_results(tmp_path / "run" / "results.jsonl")


def test_a_client_model_times_1e30_is_dropped_every_round_and_the_run_stays_on_course(tmp_path, caplog):
    # Prepare: an honest run with the same seed
    honest = _run(tmp_path / "honest", client_app)
    scaling = ScalingClientApp()
    # Execute
    with caplog.at_level(logging.WARNING, logger="flwr"):
        hostile = _run(tmp_path / "hostile", scaling)
    # Assert: each scaled reply dropped with a line naming its node and the update bound
    assert scaling.hostile_node is not None and scaling.scaled_replies == 3
    dropped = [r.getMessage() for r in caplog.records if "dropped reply from node" in r.getMessage()]
    assert len(dropped) == 3, dropped
    assert all(f"node {scaling.hostile_node} (partition {HOSTILE_PARTITION})" in line for line in dropped)
    assert all("client-model update norm" in line and "x the round's median" in line for line in dropped)
    # Assert: the run completes, with finite losses and accuracy close to the honest run's
    accuracy = np.asarray([r["accuracy"] for r in hostile])
    reference = np.asarray([r["accuracy"] for r in honest])
    print(f"\nfinal accuracy: honest {reference[-1]:.4f}, one client model x 1e30 {accuracy[-1]:.4f}")
    assert [r["round"] for r in hostile] == [0, 1, 2, 3]  # round 0: the initial model
    assert all(np.isfinite(r["loss"]) for r in hostile)
    assert np.all(accuracy >= reference - 0.05), (accuracy, reference)
