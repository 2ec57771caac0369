"""Checkpoints: a server killed mid-run resumes to the metrics and guards of an uninterrupted run; safe run folders."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fsl_sage_flwr.app.results import RunFolderError, read_results
from fsl_sage_flwr.core.buffer import SmashedBuffer
from fsl_sage_flwr.core.checkpoint import CHECKPOINT_FILE, ClientState, ClientStore, safe_load
from fsl_sage_flwr.core.training import make_adam
from simulations.paths import PROJECT_DIR
from simulations.testing import app_config

RUN = {
    "num-server-rounds": 8,  # checkpoints after rounds 2, 4 and 6: one written after the resume
    "align-interval": 2,
    "align-epochs": 5,
    "min-available-nodes": 4,
    "checkpoint-interval": 2,
}


def _server_process(output_dir: Path, **overrides: object) -> subprocess.Popen:
    """The ServerApp with 4 in-process nodes on digits, in its own process."""
    config = {**RUN, "output-dir": str(output_dir), "run-name": "run", **overrides}
    return subprocess.Popen(
        [sys.executable, "-m", "simulations.in_process", "--nodes", "4", "--run-config", json.dumps(config)],
        cwd=PROJECT_DIR,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _rounds_written(path: Path) -> list[int]:
    try:
        return [json.loads(line)["round"] for line in path.read_text().splitlines() if line.endswith("}")]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]  # timings vary


@pytest.mark.e2e  # two server processes and an uninterrupted reference run
def test_a_server_killed_mid_run_resumes_to_the_metrics_of_an_uninterrupted_run(tmp_path):
    # Prepare: the uninterrupted run, and the same run killed with SIGKILL once round 4 is recorded
    whole = _server_process(tmp_path / "whole")
    killed = _server_process(tmp_path / "killed")
    results = tmp_path / "killed" / "run" / "results.jsonl"
    deadline = time.monotonic() + 120
    while 4 not in _rounds_written(results) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert 8 not in _rounds_written(results)
    checkpoint_round = safe_load(tmp_path / "killed" / "run" / CHECKPOINT_FILE)["round"]
    assert checkpoint_round in (2, 4)
    # Execute: resume in a new process
    resumed = _server_process(tmp_path / "killed", resume=True)
    _, err = resumed.communicate(timeout=240)
    _, whole_err = whole.communicate(timeout=240)
    # Assert: every round once, each row as in the uninterrupted run (timings aside)
    assert resumed.returncode == 0, err[-3000:]
    assert whole.returncode == 0, whole_err[-3000:]
    expected = read_results(tmp_path / "whole" / "run" / "results.jsonl")
    rows = read_results(results)
    assert [r["round"] for r in rows] == list(range(9))
    assert _strip(rows) == _strip(expected)
    assert f"resuming from the checkpoint of round {checkpoint_round}" in err
    # Assert: the checkpoints both runs wrote after round 6 hold the same guard state
    resumed_guards, whole_guards = (_guards(tmp_path / run / "run" / CHECKPOINT_FILE) for run in ("killed", "whole"))
    assert resumed_guards == whole_guards
    assert len(whole_guards["identities"]["nodes"]) == 4
    assert whole_guards["activation_scale"]["recent"]


def _guards(path: Path) -> dict:
    """The reply guards' state in a checkpoint of round 6."""
    checkpoint = safe_load(path)
    assert checkpoint["round"] == 6
    return {key: checkpoint["server"][key] for key in ("activation_scale", "identities")}


def test_resume_without_a_checkpoint_and_rerun_over_results_are_refused(tmp_path):
    from fsl_sage_flwr.app.client_app import app as client_app
    from fsl_sage_flwr.app.server_app import app as server_app
    from simulations.in_process import run_in_process

    config = app_config(tmp_path, num_server_rounds=1, align_epochs=1, min_available_nodes=2)
    with pytest.raises(RunFolderError, match="does not exist"):
        run_in_process(server_app, client_app, {**config, "resume": True}, num_nodes=2)
    run_in_process(server_app, client_app, config, num_nodes=2)
    before = (tmp_path / "run" / "results.jsonl").read_text()
    # Execute: the same run name again, without resume
    with pytest.raises(RunFolderError, match="earlier run"):
        run_in_process(server_app, client_app, config, num_nodes=2)
    # Assert: the earlier results are intact
    assert (tmp_path / "run" / "results.jsonl").read_text() == before


@pytest.mark.parametrize("run_name", ["../victim", "/tmp/victim", "..", "a/../../victim", ".", "~/victim"])
def test_a_run_name_leaving_output_dir_is_refused_before_anything_is_written(tmp_path, run_name):
    from fsl_sage_flwr.app.client_app import app as client_app
    from fsl_sage_flwr.app.server_app import app as server_app
    from simulations.in_process import run_in_process

    output = tmp_path / "out"
    config = {**app_config(output, num_server_rounds=1, min_available_nodes=1), "run-name": run_name}
    with pytest.raises(RunFolderError, match="run-name"):
        run_in_process(server_app, client_app, config, num_nodes=1)
    assert not output.exists()
    assert not (tmp_path / "victim").exists()


def _state(partition_id: int) -> ClientState:
    aux = torch.nn.Linear(4, 3)
    return ClientState(aux, make_adam(aux, 1e-3, 0.0), SmashedBuffer(10))


def test_client_store_keeps_at_most_max_cached_in_memory_and_the_rest_on_disk(tmp_path):
    store = ClientStore(_state, tmp_path, max_cached=2)
    for p in range(5):
        state = _state(p)
        torch.nn.init.constant_(state.aux.weight, float(p))
        state.buffer.append(torch.full((3, 4), float(p)), torch.zeros(3, dtype=torch.long))
        store.add(p, state)
    assert len(store.cached) == 2 and len(store) == 5
    assert sorted(f.name for f in tmp_path.glob("*.pt")) == ["0.0.pt", "1.0.pt", "2.0.pt"]
    # A client read back from disk holds what it held
    assert torch.equal(store.get(0).aux.weight, torch.zeros(3, 4))
    assert len(store.cached) == 2
    z, _ = store.get(1).buffer.tensors()
    assert torch.equal(z, torch.ones(3, 4))


def test_client_store_resumes_the_files_its_checkpoint_names(tmp_path):
    store = ClientStore(_state, tmp_path, max_cached=1)
    for p in range(2):
        store.add(p, _state(p))
    snapshot = store.state_dict()
    store.commit()
    # After the checkpoint: client 0 changes and is written under a new generation
    state = store.get(0)
    torch.nn.init.constant_(state.aux.weight, 7.0)
    store.changed(0)
    store.get(1)  # evicts 0
    assert {f.name for f in tmp_path.glob("0.*.pt")} == {"0.0.pt", "0.1.pt"}
    # Execute: a new process resumes from the checkpoint
    resumed = ClientStore(_state, tmp_path, max_cached=1)
    resumed.load_state_dict(safe_load_roundtrip(snapshot, tmp_path))
    # Assert: the state of the checkpoint, the newer file gone
    assert not torch.equal(resumed.get(0).aux.weight, torch.full((3, 4), 7.0))
    assert {f.name for f in tmp_path.glob("0.*.pt")} == {"0.0.pt"}


def safe_load_roundtrip(obj: object, folder: Path) -> object:
    from fsl_sage_flwr.core.checkpoint import atomic_save

    path = folder.parent / "snapshot.pt"
    atomic_save(obj, path)
    return safe_load(path)


def test_random_states_survive_a_checkpoint(tmp_path):
    import random

    from fsl_sage_flwr.core.checkpoint import atomic_save, rng_state, set_rng_state

    random.seed(3)
    torch.manual_seed(3)
    atomic_save({"rng": rng_state()}, tmp_path / "c.pt")
    expected = (random.random(), torch.rand(3))
    random.seed(99)
    torch.manual_seed(99)
    set_rng_state(safe_load(tmp_path / "c.pt")["rng"])
    assert random.random() == expected[0]
    assert torch.equal(torch.rand(3), expected[1])
