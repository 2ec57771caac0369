"""benchmarks/gpu.sh's Flower parts: which runs each part makes, the figures read from them, and a CPU smoke run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_flower import flower_settings
from benchmarks.gpu_flower_report import comparisons, flower_figures, late_drop

REPO = Path(__file__).resolve().parent.parent


def _row(server_round: int, seconds: float, accuracy: float, cumulative: int, alignments: int = 0) -> dict:
    return {
        "round": server_round,
        "round_seconds": seconds,
        "accuracy": accuracy,
        "cumulative_bytes": cumulative,
        "alignments": alignments,
        "align_seconds": 2.0 * alignments,
    }


def test_part1_holds_one_by_one_and_stacked_part2_the_further_shares_and_cse_fsl():
    # Execute
    part1 = flower_settings("part1", [0.25, 0.125])
    part2 = flower_settings("part2", [0.25, 0.125])

    # Assert
    assert [(s.algorithm, s.gpus_per_client, s.align_stacked) for s in part1] == [
        ("fsl-sage", 0.25, False),
        ("fsl-sage", 0.25, True),
    ]
    assert [(s.algorithm, s.gpus_per_client) for s in part2] == [("fsl-sage", 0.125), ("cse-fsl", 0.25)]
    assert flower_settings("summary", [0.25]) == []


def test_ordinary_rounds_leave_out_round_1_and_alignment_rounds():
    # Prepare: round 1 holds the warm-up, round 3 an alignment
    rows = [_row(0, 9.0, 0.1, 0), _row(1, 50.0, 0.5, 10), _row(2, 4.0, 0.8, 20)]
    rows += [_row(3, 30.0, 0.86, 30, alignments=10), _row(4, 6.0, 0.84, 40)]

    # Execute
    figures = flower_figures(rows, train_images=1000, target=0.85)

    # Assert
    assert figures["ordinary_round_seconds"] == 5.0
    assert figures["images_per_second"] == 200.0
    assert figures["round_1_seconds"] == 50.0
    assert (figures["alignments"], figures["align_seconds"]) == (10, 20.0)
    assert figures["mib_to_target"] == 30 / 1024**2
    assert figures["late_drop"] == pytest.approx(0.02)


def test_late_drop_counts_falls_in_the_second_half_only():
    assert late_drop([0.5, 0.2, 0.6, 0.7, 0.65, 0.7]) == pytest.approx(0.05)


def test_bytes_to_target_compare_fsl_sage_with_cse_fsl():
    # Prepare
    sage = {"kind": "flower", "algorithm": "fsl-sage", "align_stacked": False, "mib_to_target": 3.0}
    cse = {"kind": "flower", "algorithm": "cse-fsl", "align_stacked": False, "mib_to_target": 4.0}

    # Execute
    ratios = comparisons({"a": {**sage, "final_accuracy": 0.9}, "b": {**cse, "final_accuracy": 0.8}})

    # Assert
    assert ratios["fsl_sage_over_cse_fsl_mib_to_target"] == 0.75
    assert ratios["flower_over_floor_round_seconds"] is None


@pytest.mark.e2e
@pytest.mark.benchmark  # three flwr runs and the floor loop: minutes; pytest -m benchmark
def test_part1_on_cpus_runs_the_floor_and_both_alignment_modes_through_flwr_run(tmp_path):
    # Prepare: 2 digits clients, 3 rounds (1: warm-up, 2: alignment, 3: ordinary), no GPU
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "OUT_DIR": str(tmp_path / "gpu"),
        "PRESET": "",
        "ROUNDS": "3",
        "DEVICE": "cpu",
        "GPUS": "0",
        "CPUS_PER_CLIENT": "1",
        "BUDGET": "1200",  # the default 570 s is for the GPU; a loaded CPU machine needs more
        "RUN_CONFIG": "dataset='digits' model='cnn' min-available-nodes=2 train-subset=200 align-interval=2 "
        "align-epochs=2 batch-size=16",
    }

    # Execute
    done = subprocess.run(["bash", "benchmarks/gpu.sh", "part1"], cwd=REPO, env=env, capture_output=True, text=True)

    # Assert
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "gpu" / "summary.json").read_text())
    runs = summary["runs"]
    assert set(runs) == {"floor", "fsl-sage-gpu0", "fsl-sage-gpu0-stacked"}, runs
    assert not [run for run in runs.values() if run["kind"] == "failed"], runs
    assert all(run["rounds"] == 3 and run["ordinary_round_seconds"] > 0 for run in runs.values())
    assert runs["fsl-sage-gpu0"]["alignments"] == runs["fsl-sage-gpu0-stacked"]["alignments"] > 0
    assert summary["flower_over_floor_round_seconds"] > 0
    assert summary["stacked_over_one_by_one_align_seconds"] > 0
    # The floor loop runs the same algorithm on the same partitions and seeds.
    assert abs(summary["flower_minus_floor_final_accuracy"]) < 0.02
    assert "| fsl-sage-gpu0-stacked | 0 |" in done.stdout
