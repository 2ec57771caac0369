"""``simulations.compare`` on a split network of one's own: the example app's MLP, every algorithm, one command."""

from __future__ import annotations

import csv

import pytest

from fsl_sage_flwr.split_algorithms import ALGORITHM_NAMES
from simulations.compare import main
from simulations.paths import PROJECT_DIR

EXAMPLE = PROJECT_DIR / "examples" / "tabular-mlp"
OWN = [
    "--spec",
    "tabular_mlp.task:make_spec",
    "--node-data",
    "tabular_mlp.task:load_partition",
    "--test-data",
    "tabular_mlp.task:load_testset",
]


def test_compare_stops_before_any_run_when_a_users_function_cannot_be_found(tmp_path, monkeypatch):
    # Prepare: the apps' path is restored after the test
    monkeypatch.setenv("PYTHONPATH", "")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    # Execute / Assert
    with pytest.raises(SystemExit, match="run config 'split-spec': cannot import module 'no_such_app.task'"):
        main(["--spec", "no_such_app.task:make_spec", "--output-dir", str(tmp_path / "out")])
    assert not (tmp_path / "out" / "fsl-sage").exists()


@pytest.mark.e2e  # five in-process runs of two rounds on the example's data
def test_compare_gives_every_algorithms_table_plots_bytes_and_memory_on_the_examples_own_model(tmp_path, monkeypatch):
    # Prepare: run from the example's folder, as its users would
    pytest.importorskip("sklearn")
    monkeypatch.setenv("PYTHONPATH", "")
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.chdir(EXAMPLE)
    argv = ["--in-process", "--strategies", ",".join(ALGORITHM_NAMES), "--clients", "2", "--rounds", "2"]
    # Execute
    code = main([*argv, "--output-dir", str(tmp_path), *OWN])
    # Assert: a row per algorithm with bytes and memory, both plots, per-round results
    assert code == 0
    with (tmp_path / "summary.csv").open() as f:
        rows = {row["strategy"]: row for row in csv.DictReader(f)}
    assert sorted(rows) == sorted(ALGORITHM_NAMES)
    for name, row in rows.items():
        assert float(row["total_gib"]) > 0, name
        assert float(row["server_mib"]) > 0 and float(row["client_peak_mib"]) > 0, name
        assert float(row["final_accuracy"]) > 0.5, name  # two classes
        assert (tmp_path / name / "results.jsonl").is_file()
    assert (tmp_path / "accuracy_vs_gib.png").is_file() and (tmp_path / "accuracy_vs_rounds.png").is_file()
