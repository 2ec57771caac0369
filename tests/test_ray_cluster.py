"""The simulation on an existing Ray cluster of two nodes: `RAY_ADDRESS` and the `flwr run` wrapper.

A head and a worker node, each offering one CPU, are started on 127.0.0.1 with
their own temporary folders and ports; a three-round run through
``python -m simulations.flwr_run`` connects to them, and its ClientApp actors
(one CPU each) must run on both nodes. Every process of the cluster is stopped
by its id at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from simulations.paths import PROJECT_DIR
from simulations.ray_cluster import LocalRayCluster

pytestmark = pytest.mark.e2e  # Ray nodes, a SuperLink and a three-round simulation

ROUNDS = 3
SUPERNODES = 4
RUN_CONFIG = f"num-server-rounds={ROUNDS} align-epochs=2 align-interval=1 fidelity-samples=0"


def test_simulation_runs_its_clients_on_both_nodes_of_a_ray_cluster(tmp_path):
    # Prepare: a head and a second node, one CPU each, so one client actor fits on each
    cluster = LocalRayCluster(tmp_path / "ray", cpus_per_node=(1, 1))
    command = [sys.executable, "-m", "simulations.flwr_run", "--num-supernodes", str(SUPERNODES)]
    command += ["--cpus-per-client", "1", "--output-dir", str(tmp_path / "out"), "--run-name", "r"]
    command += ["--run-config", RUN_CONFIG, "--timeout", "600"]
    # Execute: the wrapper, told of the cluster only through RAY_ADDRESS
    with cluster:
        env = {**os.environ, "RAY_ADDRESS": cluster.address}
        done = subprocess.run(command, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=900)
        placed = cluster.actor_nodes("ClientAppActor")
        running = cluster.processes()
    # Assert: the run completed every round
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "out" / "r" / "results.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(ROUNDS + 1))
    # Assert: client actors ran on the head (node 0) and on the second node (node 1)
    assert sorted(set(placed)) == [0, 1], placed
    # Assert: the cluster's processes were all stopped, and none is left
    assert running <= cluster.stopped_pids
    assert cluster.processes() == set()
