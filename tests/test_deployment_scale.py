"""Twenty real `flower-supernode`s on 127.0.0.1 finish a short FSL-SAGE run.

The Deployment Engine at a size past the three nodes of ``test_deployment.py``:
the run waits for all twenty SuperNodes, trains a quarter of them per round, completes,
and every process the test started (SuperExecs included) is gone afterwards.
"""

from __future__ import annotations

import json

import pytest

from simulations.deployment import LoopbackFederation

pytestmark = [pytest.mark.deployment, pytest.mark.scale]  # 20 SuperNode processes: run with -m scale

NODES = 20
ROUNDS = 2
SAMPLED = 5
# Tiny settings. Each sampled node starts a ClientApp process per exchange (torch imported
# anew each time), so a quarter of the nodes per round keeps this within CI's time.
RUN_CONFIG = {
    "num-server-rounds": ROUNDS,
    "min-available-nodes": NODES,
    "fraction-train": SAMPLED / NODES,
    "align-epochs": 1,
    "align-interval": 1,
    "upload-interval": 1,
    "fidelity-samples": 0,
    "batch-size": 64,
}


def test_twenty_supernodes_complete_a_run(tmp_path):
    # Prepare: twenty SuperNodes, each on its partition of the bundled digits
    node_configs = [{"partition-id": i, "num-partitions": NODES} for i in range(NODES)]
    fed = LoopbackFederation(tmp_path / "federation", node_configs, cli_timeout=300, start_batch=5)
    # Execute
    with fed:
        outcome = fed.run({**RUN_CONFIG, "output-dir": str(tmp_path / "out"), "run-name": "x"}, timeout=600)
        started = {p.pid for p in fed.processes}
    # Assert: completed, and each round sampled its quarter (a node is warmed up when first sampled)
    logs = "\n".join(p.read_text(errors="replace")[-1500:] for p in sorted(fed.log_dir.glob("*.log")))
    assert outcome.status == "finished:completed", logs
    rows = [json.loads(line) for line in (tmp_path / "out" / "x" / "results.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == list(range(ROUNDS + 1))
    assert rows[1].get("nodes_warmed_up") == SAMPLED, rows
    assert SAMPLED <= sum(r.get("nodes_warmed_up", 0) for r in rows) <= ROUNDS * SAMPLED, rows
    # Assert: the SuperLink, the twenty SuperNodes and their SuperExecs are all gone
    assert len(started) == NODES + 1
    assert started <= fed.stopped_pids
    assert fed.alive_pids() == []
