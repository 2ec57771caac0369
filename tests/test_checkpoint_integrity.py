"""Checkpoints prove themselves: a SHA-256 beside each file, and a resumed state checked before it is restored."""

from __future__ import annotations

import os

import pytest
import torch

from fsl_sage_flwr.app.results import RunFolderError
from fsl_sage_flwr.app.resume_checks import check_resume_state
from fsl_sage_flwr.core.buffer import SmashedBuffer
from fsl_sage_flwr.core.checkpoint import (
    CHECKPOINT_FILE,
    ClientState,
    ClientStore,
    DamagedFileError,
    atomic_save,
    hash_path,
    safe_load,
)
from fsl_sage_flwr.core.training import make_adam


def _checkpoint(last_round: int = 2) -> dict:
    """A small checkpoint shaped as the ServerApp writes it: arrays, server model and optimizer, slots, rows."""
    model = torch.nn.Linear(4, 3)
    optimizer = make_adam(model, 1e-3, 0.0)
    model(torch.ones(2, 4)).sum().backward()
    optimizer.step()
    return {
        "round": last_round,
        "arrays": {k: v.clone() for k, v in model.state_dict().items()},
        "server": {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "slots": [[11, 0, 0, 1], [12, 1, 0, 0]],
        },
        "rows": [{"round": r, "accuracy": 0.5} for r in range(last_round + 1)],
    }


def _state(partition_id: int) -> ClientState:
    aux = torch.nn.Linear(4, 3)
    return ClientState(aux, make_adam(aux, 1e-3, 0.0), SmashedBuffer(10))


def test_a_flipped_byte_in_a_checkpoint_is_refused(tmp_path):
    # Prepare
    path = tmp_path / CHECKPOINT_FILE
    checkpoint = _checkpoint()
    atomic_save(checkpoint, path)
    data = bytearray(path.read_bytes())
    # A byte inside the stored weights: the zip stays readable, only the values change.
    at = data.index(checkpoint["arrays"]["weight"].numpy().tobytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    # Execute / Assert
    with pytest.raises(DamagedFileError, match="checkpoint.pt does not match its SHA-256"):
        safe_load(path)


def test_a_checkpoint_without_its_hash_file_is_refused(tmp_path):
    # Prepare
    path = tmp_path / CHECKPOINT_FILE
    atomic_save(_checkpoint(), path)
    hash_path(path).unlink()
    # Execute / Assert
    with pytest.raises(DamagedFileError, match="checkpoint.pt"):
        safe_load(path)


def test_a_damaged_client_file_is_refused_when_the_store_reads_it(tmp_path):
    # Prepare: client 0 leaves the cache for its file, which is then damaged
    store = ClientStore(_state, tmp_path, max_cached=1)
    store.add(0, _state(0))
    store.add(1, _state(1))
    path = tmp_path / "0.0.pt"
    data = bytearray(path.read_bytes())
    data[-30] ^= 0x01
    path.write_bytes(bytes(data))
    # Execute / Assert
    with pytest.raises(DamagedFileError, match="0.0.pt"):
        store.get(0)


def test_a_saved_checkpoint_loads_and_passes_the_resume_checks(tmp_path):
    # Prepare
    path = tmp_path / CHECKPOINT_FILE
    atomic_save(_checkpoint(), path)
    # Execute
    checkpoint = safe_load(path)
    # Assert: no error
    check_resume_state(checkpoint, str(path))


def test_nan_server_weights_are_refused_on_resume():
    # Prepare
    checkpoint = _checkpoint()
    checkpoint["server"]["model"]["weight"][0, 0] = float("nan")
    # Execute / Assert
    with pytest.raises(RunFolderError, match="non-finite values in server.model.weight"):
        check_resume_state(checkpoint, "ckpt")


def test_rows_that_skip_a_round_are_refused_on_resume():
    # Prepare
    checkpoint = _checkpoint(last_round=3)
    del checkpoint["rows"][2]
    # Execute / Assert
    with pytest.raises(RunFolderError, match=r"rounds \[0, 1, 3\], expected 0..3"):
        check_resume_state(checkpoint, "ckpt")


def test_a_partition_in_two_client_slots_is_refused_on_resume():
    # Prepare
    checkpoint = _checkpoint()
    checkpoint["server"]["slots"].append([13, 1, 0, 0])
    # Execute / Assert
    with pytest.raises(RunFolderError, match="partition 1 holds two client slots"):
        check_resume_state(checkpoint, "ckpt")


def test_a_temporary_file_left_by_a_killed_writer_does_not_block_the_next_save(tmp_path):
    # Prepare: the temporary name this process would use, left behind
    path = tmp_path / CHECKPOINT_FILE
    (tmp_path / f".{CHECKPOINT_FILE}.{os.getpid()}.tmp").write_bytes(b"torn")
    # Execute
    atomic_save({"round": 1}, path)
    # Assert
    assert safe_load(path) == {"round": 1}
