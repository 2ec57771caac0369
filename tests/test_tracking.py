"""Results rows also go to TensorBoard or MLflow when the run config asks for it."""

from __future__ import annotations

import pytest

from fsl_sage_flwr.app.client_app import app as client_app
from fsl_sage_flwr.app.results import read_results
from fsl_sage_flwr.app.server_app import app as server_app
from fsl_sage_flwr.app.tracking import MLflowTracker, TensorBoardTracker, numeric_fields, open_tracker
from simulations.in_process import run_in_process
from simulations.testing import app_config

ROWS = [
    {"round": 0, "accuracy": 0.1, "loss": 2.3, "algorithm": "fsl-sage", "non_finite": False},
    {"round": 1, "accuracy": 0.6, "loss": 1.1, "algorithm": "fsl-sage", "fidelity_by_partition": {"0": 0.5}},
]


def _tensorboard_scalars(log_dir, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return [(e.step, round(e.value, 6)) for e in events.Scalars(tag)]


def test_only_plain_numbers_of_a_row_are_tracked():
    assert numeric_fields(ROWS[0]) == {"accuracy": 0.1, "loss": 2.3}


def test_tensorboard_gets_every_number_at_its_round(tmp_path):
    # Prepare
    tracker = TensorBoardTracker(tmp_path)
    # Execute
    for row in ROWS:
        tracker.write(row)
    tracker.close()
    # Assert
    assert _tensorboard_scalars(tracker.log_dir, "accuracy") == [(0, 0.1), (1, 0.6)]
    assert _tensorboard_scalars(tracker.log_dir, "loss") == [(0, 2.3), (1, 1.1)]


def test_mlflow_gets_every_number_at_its_round(tmp_path):
    # Prepare
    from mlflow.tracking import MlflowClient

    tracker = MLflowTracker(tmp_path, "run-a")
    run_id = tracker._run.info.run_id
    # Execute
    for row in ROWS:
        tracker.write(row)
    tracker.close()
    # Assert
    history = MlflowClient(tracking_uri=tracker.tracking_uri).get_metric_history(run_id, "accuracy")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.1), (1, 0.6)]


def test_an_unknown_tracker_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match="run config 'track' must be one of"):
        open_tracker("wandb", tmp_path, "run")
    assert open_tracker("", tmp_path, "run") is None


@pytest.mark.e2e  # an in-process run of the apps, one round
def test_a_run_with_track_tensorboard_writes_its_rows_there(tmp_path):
    # Prepare
    config = app_config(tmp_path, num_server_rounds=1, min_available_nodes=2, device="cpu", track="tensorboard")
    # Execute
    run_in_process(server_app, client_app, config, num_nodes=2)
    # Assert: the same accuracies as results.jsonl, at the same rounds
    rows = read_results(tmp_path / "run" / "results.jsonl")
    expected = [(row["round"], round(row["accuracy"], 6)) for row in rows]
    assert _tensorboard_scalars(tmp_path / "run" / "tensorboard", "accuracy") == expected
