"""The planner's bytes and memory agree with a real run's byte ledger and results, for every algorithm."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fsl_sage_flwr.app.client_app import app as client_app
from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.app.results import read_results
from fsl_sage_flwr.app.server_app import app as server_app
from fsl_sage_flwr.core.models import build_split_model, required_input_shape
from fsl_sage_flwr.data import load_dataset, load_partition
from fsl_sage_flwr.planning import plan
from simulations.in_process import run_in_process

pytestmark = pytest.mark.e2e  # each case is a whole in-process run of the apps

NODES = 4
TOLERANCE = 0.02
# Three rounds with an alignment after round 2: FSL-SAGE's aux travels in rounds 1 and 3.
SMALL_RUN = {
    "num-server-rounds": 3,
    "align-interval": 2,
    "align-epochs": 1,
    "fidelity-samples": 0,
    "train-subset": 400,
    "min-available-nodes": NODES,
    "device": "cpu",
}


def _run(tmp_path: Path, settings: dict) -> tuple[RunSettings, list[dict]]:
    config = tomllib.loads(Path("pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    config = {**config, **SMALL_RUN, **settings, "output-dir": str(tmp_path), "run-name": "run"}
    run_in_process(server_app, client_app, config, NODES)
    return RunSettings.from_run_config(config), read_results(tmp_path / "run" / "results.jsonl")


def _plan_for(settings: RunSettings):
    shape = required_input_shape(settings.model)
    partition = {"partitioning": settings.partitioning, "alpha": settings.alpha, "seed": settings.training.seed}
    subset = {"input_shape": shape, "train_subset": settings.train_subset}
    sizes = [len(load_partition(settings.dataset, i, NODES, **partition, **subset)) for i in range(NODES)]
    data = load_dataset(settings.dataset, seed=settings.training.seed, **subset)
    split = build_split_model(settings.model, num_classes=data.num_classes, input_shape=data.input_shape)
    return plan(
        split,
        samples_per_client=sizes,
        num_server_rounds=settings.num_server_rounds,
        training=settings.training,
        alignment=settings.alignment,
        fraction_train=settings.fraction_train,
        min_train_nodes=settings.min_train_nodes,
        warm_up=settings.warm_up,
        input_shape=data.input_shape,
    )


@pytest.mark.parametrize(
    "settings",
    [
        {"algorithm": "fsl-sage"},
        {"algorithm": "fsl-sage", "upload-dtype": "int8", "fraction-train": 0.5, "warm-up": "all"},
        {"algorithm": "cse-fsl", "upload-dtype": "bfloat16"},
        {"algorithm": "splitfed-ms"},
        {"algorithm": "splitfed-ss"},
        {"algorithm": "fedavg"},
    ],
    ids=["fsl-sage", "fsl-sage-int8-half", "cse-fsl-bf16", "splitfed-ms", "splitfed-ss", "fedavg"],
)
def test_the_planned_bytes_and_memory_are_the_ledgers(tmp_path, settings):
    # Prepare: a small digits run of the apps, its byte ledger in results.jsonl
    run_settings, rows = _run(tmp_path, settings)
    # Execute
    forecast = _plan_for(run_settings)[run_settings.algorithm]
    # Assert: every round, both ways, the run's total and the memory, within 2 %
    ledger = {row["round"]: (row["bytes_down"], row["bytes_up"]) for row in rows if row["round"] >= 1}
    planned = {r.round: (r.down, r.up) for r in forecast.rounds}
    assert set(planned) == set(ledger)
    for server_round, (down, up) in ledger.items():
        assert planned[server_round][0] == pytest.approx(down, rel=TOLERANCE), f"round {server_round} down"
        assert planned[server_round][1] == pytest.approx(up, rel=TOLERANCE), f"round {server_round} up"
    assert forecast.total_bytes == pytest.approx(rows[-1]["cumulative_bytes"], rel=TOLERANCE)
    assert forecast.client_memory.peak == pytest.approx(rows[-1]["client_peak_memory_bytes"], rel=TOLERANCE)
    assert forecast.server_memory == pytest.approx(rows[-1]["server_memory_bytes"], rel=TOLERANCE)
