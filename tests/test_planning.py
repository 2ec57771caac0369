"""The planner: message sizes, the FSL-SAGE schedule, measured memory, the verdict and the command."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from torch import nn

from fsl_sage_flwr import SplitSpec
from fsl_sage_flwr.core.alignment import AlignmentSettings
from fsl_sage_flwr.core.memory import state_nbytes
from fsl_sage_flwr.core.models import build_split_model
from fsl_sage_flwr.planning import ModelBytes, Schedule, plan, verdict
from fsl_sage_flwr.planning.traffic import fsl_sage_rounds, npy_nbytes, step_batch_sizes, uploaded_batch_sizes
from fsl_sage_flwr.transport.local_training import LocalTraining
from simulations import plan as plan_command

INPUT = (1, 8, 8)


def _costly_spec(channels: int) -> SplitSpec:
    """A split whose cut (``channels`` x 8 x 8 values) outweighs its small server part."""
    return SplitSpec(
        client_model=lambda: nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.ReLU()),
        server_model=lambda: nn.Sequential(nn.Flatten(), nn.Linear(channels * 8 * 8, 10)),
        aux_model=lambda: nn.Sequential(nn.Flatten(), nn.Linear(channels * 8 * 8, 10)),
        cut_shape=(channels, 8, 8),
        num_classes=10,
    )


def test_local_steps_skip_a_one_sample_tail_and_uploads_take_every_qth_step_across_epochs():
    # Prepare
    training = LocalTraining(batch_size=16, local_epochs=2, upload_interval=3)
    # Execute
    with_tail_of_one = step_batch_sizes(33, training)
    with_tail_of_two = step_batch_sizes(34, training)
    uploaded = uploaded_batch_sizes(34, training)
    # Assert
    assert with_tail_of_one == [16, 16, 16, 16]
    assert with_tail_of_two == [16, 16, 2, 16, 16, 2]
    assert uploaded == [16, 16]  # steps 0 and 3 of six


@pytest.mark.parametrize(("shape", "dtype"), [((16, 1, 3, 3), "float32"), ((), "int64"), ((40, 16, 2, 2), "uint16")])
def test_npy_nbytes_is_the_length_numpy_saves(shape, dtype):
    # Prepare
    stream = io.BytesIO()
    np.save(stream, np.zeros(shape, dtype=dtype), allow_pickle=False)
    # Execute
    nbytes = npy_nbytes(shape, dtype)
    # Assert
    assert nbytes == len(stream.getvalue())


def test_fsl_sage_sends_each_aux_after_the_warm_up_and_after_each_alignment_but_the_last_rounds():
    # Prepare: l = 2 over 4 rounds, every client trains: alignments after the warm-up and round 2 (not 4)
    models = ModelBytes(client=1000, server=5000, aux=300, cut_shape=(4,), client_npy=1100, aux_npy=400)
    schedule = Schedule(samples=(40, 40, 40), num_server_rounds=4)
    training = LocalTraining(batch_size=16)
    # Execute
    rounds = fsl_sage_rounds(models, schedule, training, AlignmentSettings(interval=2))
    # Assert
    downs = [r.down for r in rounds]
    assert downs == [3 * 1000 + 3 * 1300, 3 * 1000, 3 * 1300, 3 * 1000]


def test_the_plan_measures_each_client_on_the_models_it_holds():
    # Prepare
    split = build_split_model("cnn", num_classes=10, input_shape=INPUT)
    # Execute
    result = plan(split, samples_per_client=40, clients=3, num_server_rounds=2, input_shape=INPUT)
    # Assert
    client, server, aux = (state_nbytes(m) for m in (split.client, split.server, split.aux))
    assert result["fedavg"].client_memory.parameters == client + server
    assert result["fsl-sage"].client_memory.parameters == client + aux
    assert result["splitfed-ss"].client_memory.parameters == client
    sage = result["fsl-sage"].client_memory
    assert sage.activations > 0 and sage.optimizer > 0
    assert sage.peak >= sage.parameters + sage.optimizer + sage.activations
    assert result.exact


def test_partial_sampling_marks_the_plan_as_an_expectation():
    # Prepare
    split = build_split_model("cnn", num_classes=10, input_shape=INPUT)
    # Execute
    result = plan(split, samples_per_client=40, clients=4, num_server_rounds=2, fraction_train=0.5, input_shape=INPUT)
    # Assert
    assert not result.exact
    assert any("expectations" in note for note in result.notes)
    assert result["fedavg"].rounds[0].down == 2 * state_nbytes(nn.Sequential(split.client, split.server))


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"samples_per_client": 40}, "clients"),
        ({"samples_per_client": [40, 40], "clients": 3}, "clients"),
        ({"samples_per_client": [40, 1]}, "samples_per_client"),
        ({"samples_per_client": 40, "clients": 2, "fraction_train": 0.0}, "fraction_train"),
    ],
)
def test_bad_arguments_are_refused_naming_them(arguments, named):
    # Prepare
    split = build_split_model("cnn", num_classes=10, input_shape=INPUT)
    # Execute / Assert
    with pytest.raises(ValueError, match=named):
        plan(split, num_server_rounds=2, input_shape=INPUT, **arguments)


def test_a_spec_without_test_set_needs_the_input_shape():
    # Execute / Assert
    with pytest.raises(ValueError, match="input_shape"):
        plan(_costly_spec(8), samples_per_client=40, clients=2, num_server_rounds=2)


def test_the_verdict_says_fsl_sage_costs_more_and_which_q_would_change_it():
    # Prepare
    training = LocalTraining(batch_size=16, upload_interval=1)
    # Execute
    result = plan(
        _costly_spec(8), samples_per_client=640, clients=4, num_server_rounds=10, training=training, input_shape=INPUT
    )
    found = verdict(result)
    # Assert
    assert not found.saves_bytes
    assert "MORE communication" in found.lines[0]
    q_line = next(line for line in found.lines if "a larger q" in line)
    suggested = int(q_line.split("upload-interval ")[1].split()[0])
    replanned = plan(
        _costly_spec(8),
        samples_per_client=640,
        clients=4,
        num_server_rounds=10,
        training=dataclasses.replace(training, upload_interval=suggested),
        input_shape=INPUT,
    )
    assert replanned["fsl-sage"].total_bytes < replanned["fedavg"].total_bytes
    assert any("upload-dtype int8" in line for line in found.lines)
    assert any("a later cut" in line for line in found.lines)


def test_the_command_plans_a_spec_given_as_module_and_function(tmp_path, monkeypatch, capsys):
    # Prepare: a module of the user's with a function returning the spec
    (tmp_path / "user_split.py").write_text(
        "from torch import nn\n"
        "from fsl_sage_flwr import SplitSpec\n"
        "def make_spec():\n"
        "    return SplitSpec(client_model=lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 32)),\n"
        "                     server_model=lambda: nn.Linear(32, 10), aux_model=lambda: nn.Linear(32, 10),\n"
        "                     cut_shape=(32,), num_classes=10)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    # Execute
    code = plan_command.main(
        ["--spec", "user_split:make_spec", "--input-shape", "1,8,8", "--clients", "3", "--samples-per-client", "50"]
    )
    # Assert
    printed = capsys.readouterr().out
    assert code == 0
    assert "| fsl-sage |" in printed and "| fedavg |" in printed
    assert "communication" in printed and "client memory" in printed


def test_the_command_refuses_a_spec_that_is_not_module_and_name():
    # Execute / Assert
    with pytest.raises(SystemExit, match="module.path:name"):
        plan_command.main(["--spec", "no_colon_here", "--samples-per-client", "50"])


def test_an_input_shape_the_split_cannot_take_is_named():
    # Prepare: the client takes 64 inputs per sample, not 30
    spec = SplitSpec(
        client_model=lambda: nn.Linear(64, 32),
        server_model=lambda: nn.Linear(32, 10),
        aux_model=lambda: nn.Linear(32, 10),
        cut_shape=(32,),
        num_classes=10,
    )
    # Execute / Assert
    with pytest.raises(ValueError, match=r"input_shape \(30,\)"):
        plan(spec, samples_per_client=40, clients=2, num_server_rounds=2, input_shape=(30,))


def test_the_verdict_says_when_the_aux_makes_a_client_hold_more_than_fedavg():
    # Prepare: an aux far larger than the server part
    spec = SplitSpec(
        client_model=lambda: nn.Linear(64, 32),
        server_model=lambda: nn.Linear(32, 10),
        aux_model=lambda: nn.Sequential(nn.Linear(32, 2048), nn.ReLU(), nn.Linear(2048, 10)),
        cut_shape=(32,),
        num_classes=10,
    )
    # Execute
    found = verdict(plan(spec, samples_per_client=40, clients=2, num_server_rounds=2, input_shape=(64,)))
    # Assert
    assert not found.saves_client_memory
    assert any("MORE client memory" in line for line in found.lines)
    assert any(line.startswith("- the aux model takes") for line in found.lines)
