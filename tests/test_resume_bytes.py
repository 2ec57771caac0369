"""A resumed FSL-SAGE run whose nodes come back with new node ids counts the same bytes as an uninterrupted run."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fsl_sage_flwr.app.client_app import app as client_app
from fsl_sage_flwr.app.results import read_results
from fsl_sage_flwr.app.server_app import app as server_app
from simulations.in_process import InProcessGrid, run_in_process

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
BYTE_FIELDS = ("bytes_up", "bytes_down", "cumulative_bytes")


def _config(output_dir: Path, **overrides: object) -> dict:
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    config.update(
        {
            "num-server-rounds": 4,
            "min-available-nodes": 3,
            "align-interval": 2,
            "align-epochs": 2,
            "train-subset": 300,
            "checkpoint-interval": 2,
            "output-dir": str(output_dir),
            "run-name": "run",
            **overrides,
        }
    )
    return config


@pytest.mark.slow  # three short in-process runs
def test_byte_counters_after_a_resume_with_new_node_ids_match_an_uninterrupted_run(tmp_path):
    # Prepare: the uninterrupted run, and a run that stops after round 3 with its checkpoint of round 2
    run_in_process(server_app, client_app, _config(tmp_path / "whole"), 3, node_id_seed=1)
    run_in_process(server_app, client_app, _config(tmp_path / "cut", **{"num-server-rounds": 3}), 3, node_id_seed=1)

    # Execute: resume on nodes whose ids are all new
    resumed = _config(tmp_path / "cut", resume=True)
    grid = run_in_process(server_app, client_app, resumed, 3, node_id_seed=2)

    # Assert: the node ids did change, and every round's byte counters are the uninterrupted run's
    first_ids = set(InProcessGrid(client_app, 3, resumed, node_id_seed=1).get_node_ids())
    assert first_ids.isdisjoint(grid.get_node_ids())
    whole = read_results(tmp_path / "whole" / "run" / "results.jsonl")
    cut = read_results(tmp_path / "cut" / "run" / "results.jsonl")
    assert [row["round"] for row in cut] == [0, 1, 2, 3, 4]
    assert [[row[f] for f in BYTE_FIELDS] for row in cut] == [[row[f] for f in BYTE_FIELDS] for row in whole]
    # Assert: the re-identification of the three nodes is reported apart, in the first resumed round only
    assert [row.get("resume_bytes", 0) > 0 for row in cut] == [False, False, False, True, False]
    assert [row["accuracy"] for row in cut] == [row["accuracy"] for row in whole]
