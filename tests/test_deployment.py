"""A real federation on loopback: `flower-superlink`, three `flower-supernode`s, `flwr run`.

Each test starts the Deployment Engine processes (no simulation), runs FSL-SAGE for
three rounds, checks the run's status and results, and checks that every process
the test started (SuperExecs included) is gone afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fsl_sage_flwr.data import load_partition
from simulations.deployment import LoopbackFederation

pytestmark = pytest.mark.deployment

NODES = 3
ROUNDS = 3
RUN_CONFIG = {"num-server-rounds": ROUNDS, "min-available-nodes": NODES, "align-epochs": 5}
CHANCE = 0.1  # digits: 10 balanced classes


def _run_and_check(fed: LoopbackFederation, tmp_path: Path) -> None:
    # Execute
    with fed:
        outcome = fed.run({**RUN_CONFIG, "output-dir": str(tmp_path / "out"), "run-name": "x"}, timeout=600)
        started = {p.pid for p in fed.processes}
    # Assert: completed, one result row per round, better than chance after the last
    logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted(fed.log_dir.glob("*.log")))
    assert outcome.status == "finished:completed", logs
    rows = [json.loads(line) for line in (tmp_path / "out" / "x" / "results.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(ROUNDS + 1))
    assert rows[-1]["accuracy"] > 2 * CHANCE, rows[-1]
    # Assert: the SuperLink, the SuperNodes and the SuperExecs they spawned are all gone
    assert started <= fed.stopped_pids
    assert len(fed.stopped_pids) >= 2 * (NODES + 1), "expected a SuperExec per SuperLink and SuperNode"
    assert fed.alive_pids() == []


def test_insecure_federation_with_node_local_data(tmp_path):
    # Prepare: each node gets its own train.npz (a digits partition, image-shaped for the cnn)
    node_configs = []
    for i in range(NODES):
        part = load_partition("digits", i, NODES, partitioning="dirichlet", alpha=1.0, seed=0)
        folder = tmp_path / f"node-{i}"
        folder.mkdir()
        np.savez(folder / "train.npz", x=part.images, y=part.labels)
        node_configs.append({"partition-id": i, "data-dir": str(folder)})
    # Execute / Assert
    _run_and_check(LoopbackFederation(tmp_path / "federation", node_configs), tmp_path)


def test_tls_federation_with_partitions(tmp_path):
    # Prepare: the run's dataset, partitioned by node config; a CA and server certificate made here
    node_configs = [{"partition-id": i, "num-partitions": NODES} for i in range(NODES)]
    fed = LoopbackFederation(tmp_path / "federation", node_configs, tls=True)
    # Execute / Assert
    _run_and_check(fed, tmp_path)
    assert "root-certificates" in (fed.flwr_home / "config.toml").read_text()
    assert "--ssl-certfile" in (fed.log_dir / "superlink.log").read_text().splitlines()[0]
