"""The run-config keys naming a user's split network and data: checked early, one path with the built-in models."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Context, RecordDict

from fsl_sage_flwr.app.client_app import app as client_app
from fsl_sage_flwr.app.client_app import build_client
from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.app.results import read_results
from fsl_sage_flwr.app.run_split import server_split
from fsl_sage_flwr.app.server_app import app as server_app
from fsl_sage_flwr.app.user_code import UserCodeError, call_reference
from fsl_sage_flwr.core.models import build_split_model
from fsl_sage_flwr.specs import builtin_spec
from simulations.in_process import run_in_process
from simulations.testing import app_config


@pytest.mark.parametrize("key", ["split-spec", "node-data", "test-data"])
def test_a_reference_that_is_not_module_colon_function_is_refused_naming_the_key(tmp_path, key):
    # Prepare
    config = app_config(tmp_path, **{key: "own_split.make_spec"})
    # Execute / Assert
    with pytest.raises(ValueError, match=key.replace("-", "_")):
        RunSettings.from_run_config(config)


@pytest.mark.parametrize(
    ("reference", "message"),
    [
        ("no_such_module_here:make_spec", "cannot import module 'no_such_module_here'"),
        ("own_split:no_such_function", "has no attribute 'no_such_function'"),
        ("own_split:NOT_CALLABLE", "is a int, not a function"),
    ],
)
def test_user_code_that_cannot_be_called_fails_naming_the_key_and_the_cause(reference, message):
    # Execute / Assert
    with pytest.raises(UserCodeError, match=f"run config 'split-spec'.*{message}"):
        call_reference(reference, "split-spec", None)


def test_a_spec_function_returning_something_else_fails_before_any_message(tmp_path):
    # Prepare
    settings = RunSettings.from_run_config(app_config(tmp_path, split_spec="own_split:not_a_spec"))
    # Execute / Assert
    with pytest.raises(UserCodeError, match="'split-spec': 'own_split:not_a_spec' returned a int, not a SplitSpec"):
        server_split(settings)


def test_own_nodes_data_without_a_test_set_is_refused_naming_both_ways_to_give_one(tmp_path):
    # Prepare: the spec holds no test set, the nodes bring their own data, no test-data
    config = app_config(tmp_path, split_spec="own_split:make_spec", node_data="own_split:load_node_partition")
    # Execute / Assert
    with pytest.raises(UserCodeError, match="give the SplitSpec a testset or set 'test-data'"):
        server_split(RunSettings.from_run_config(config))


def test_test_data_gives_the_server_its_test_set_when_the_spec_has_none(tmp_path):
    # Prepare
    config = app_config(
        tmp_path,
        split_spec="own_split:make_spec",
        node_data="own_split:load_node_partition",
        test_data="own_split:load_testset",
    )
    # Execute
    run_split = server_split(RunSettings.from_run_config(config))
    # Assert: the digits test split, flattened
    assert run_split.testset.images.shape == (360, 64)
    assert run_split.max_examples == 1_000_000  # the server never sees the nodes' data


@pytest.mark.parametrize(("model", "input_shape"), [("cnn", (1, 8, 8)), ("resnet18", (3, 32, 32))])
def test_a_built_in_model_as_a_spec_builds_the_same_seeded_models_as_by_name(model, input_shape):
    # Prepare
    spec = builtin_spec(model, num_classes=10, input_shape=input_shape)
    # Execute
    torch.manual_seed(3)
    by_name = build_split_model(model, num_classes=10, input_shape=input_shape)
    torch.manual_seed(3)
    by_spec = spec.build()
    # Assert
    assert spec.cut_shape == by_name.cut_shape
    for part in ("client", "server", "aux"):
        for a, b in zip(getattr(by_name, part).state_dict().values(), getattr(by_spec, part).state_dict().values()):
            assert torch.equal(a, b), part


def test_a_node_of_an_own_split_trains_on_its_node_data(tmp_path):
    # Prepare
    config = app_config(tmp_path, split_spec="own_split:make_spec", node_data="own_split:load_node_partition")
    context = Context(1, 5, {"partition-id": 1, "num-partitions": 4}, RecordDict(), config)
    # Execute
    client, _ = build_client(context)
    # Assert: a quarter of the 1437 training digits, 64 features each, on the spec's parts
    assert tuple(client.x.shape) in ((359, 64), (360, 64))
    assert client.split.cut_shape == (16,)


@pytest.mark.e2e  # five in-process runs of two rounds
@pytest.mark.parametrize("algorithm", ["fsl-sage", "cse-fsl", "fedavg", "splitfed-ms", "splitfed-ss"])
def test_every_algorithm_runs_on_an_own_split_through_the_apps(tmp_path, algorithm):
    # Prepare: the spec with its test set, the nodes' own data
    config = app_config(
        tmp_path,
        algorithm=algorithm,
        num_server_rounds=2,
        min_available_nodes=3,
        align_interval=1,
        align_epochs=2,
        lr=0.01,
        split_spec="own_split:make_spec_with_testset",
        node_data="own_split:load_node_partition",
    )
    # Execute
    run_in_process(server_app, client_app, config, num_nodes=3)
    # Assert: a results row per round with bytes, memory and a learnt model; final models saved
    rows = read_results(tmp_path / "run" / "results.jsonl")
    assert [r["round"] for r in rows] == [0, 1, 2]
    assert rows[-1]["cumulative_bytes"] > 0 and rows[-1]["server_memory_bytes"] > 0
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] + 0.2  # the untrained model's is about chance
    assert list((tmp_path / "run").glob("*.pt"))


@pytest.mark.e2e  # three in-process runs of up to three rounds
def test_an_own_split_resumes_from_its_checkpoint_with_compressed_uploads_and_adaptive_alignment(tmp_path):
    # Prepare: int8 uploads and adaptive alignment; one run of 3 rounds, one of 2 (checkpoint after round 1)
    own = {
        "split_spec": "own_split:make_spec_with_testset",
        "node_data": "own_split:load_node_partition",
        "upload_dtype": "int8",
        "align_threshold": 0.25,
        "min_available_nodes": 3,
        "align_epochs": 2,
        "checkpoint_interval": 1,
    }
    whole = app_config(tmp_path / "whole", num_server_rounds=3, **own)
    cut = app_config(tmp_path / "cut", num_server_rounds=2, **own)
    run_in_process(server_app, client_app, whole, num_nodes=3)
    run_in_process(server_app, client_app, cut, num_nodes=3)
    # Execute: resume the shorter run from its checkpoint, to round 3
    run_in_process(server_app, client_app, {**cut, "num-server-rounds": 3, "resume": True}, num_nodes=3)
    # Assert: every row as in the uninterrupted run, timings aside
    expected = read_results(tmp_path / "whole" / "run" / "results.jsonl")
    resumed = read_results(tmp_path / "cut" / "run" / "results.jsonl")
    assert [r["round"] for r in resumed] == [0, 1, 2, 3]
    assert _without_timings(resumed) == _without_timings(expected)


def _without_timings(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if "seconds" not in k and "time" not in k} for row in rows]
