"""Tests of the run settings' defaults: one source, which pyproject.toml's run config repeats."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from torch import nn

from fsl_sage_flwr import SplitSpec
from fsl_sage_flwr.app.config import RunSettings, run_config_reference
from fsl_sage_flwr.core.alignment import AlignmentSettings
from fsl_sage_flwr.transport.local_training import LocalTraining

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_pyproject_run_config_equals_the_settings_defaults():
    # Prepare
    run_config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    # Execute
    defaults = RunSettings().to_config()
    # Assert: the same keys, and each value equal and of the same type
    assert sorted(run_config) == sorted(defaults)
    for key, value in defaults.items():
        assert run_config[key] == value and type(run_config[key]) is type(value), key


def test_local_training_and_alignment_take_the_run_settings_defaults():
    # Execute
    settings = RunSettings()
    # Assert: what the strategy and the clients get by default is what a run gets
    assert settings.training == LocalTraining()
    assert settings.alignment == AlignmentSettings()


def test_the_reference_documents_every_run_config_key_once_with_its_default():
    # Prepare
    defaults = RunSettings().to_config()
    # Execute
    reference = run_config_reference()
    # Assert: each key once, with the value a run gets by default and a meaning
    assert [entry.key for entry in reference] == list(defaults)
    for entry in reference:
        assert entry.default == defaults[entry.key], entry.key
        assert entry.help and entry.owner in ("RunSettings", "LocalTraining", "AlignmentSettings", "UploadPrivacy"), (
            entry.key
        )


@pytest.mark.parametrize(
    ("record", "field", "value", "message"),
    [
        (AlignmentSettings, "interval", 0, r"'align-interval' must be >= 1, got 0 \(AlignmentSettings.interval\)"),
        (AlignmentSettings, "buffer_size", 0, r"'buffer-size' must be >= 1"),
        (AlignmentSettings, "batch_size", 0, r"'align-batch-size' must be >= 1"),
        (AlignmentSettings, "epochs", -1, r"'align-epochs' must be >= 0"),
        (AlignmentSettings, "lr", 0.0, r"'align-lr' must be a finite number > 0"),
        (AlignmentSettings, "weight_decay", float("nan"), r"'weight-decay' must be a finite number >= 0"),
        (AlignmentSettings, "patience", -1, r"'align-patience' must be >= 0"),
        (AlignmentSettings, "min_improvement", 1.0, r"'align-min-improvement' must be in \[0, 1\)"),
        (AlignmentSettings, "threshold", -0.2, r"'align-threshold' must be a cosine in \[0, 1\]"),
        (AlignmentSettings, "budget_bytes", -1, r"'align-budget-bytes' must be >= 0"),
        (AlignmentSettings, "stacked", 1, r"'align-stacked' must be bool, got 1 \(AlignmentSettings.stacked\)"),
        (AlignmentSettings, "interval", 2.5, r"'align-interval' must be int"),
        (
            LocalTraining,
            "upload_interval",
            0,
            r"'upload-interval' must be >= 1, got 0 \(LocalTraining.upload_interval\)",
        ),
        (LocalTraining, "weight_decay", -1.0, r"'weight-decay' must be a finite number >= 0"),
        (LocalTraining, "upload_dtype", "float8", r"'upload-dtype' must be one of float32, .*got 'float8'"),
        (LocalTraining, "seed", -1, r"'seed' must be >= 0"),
        (
            RunSettings,
            "num_server_rounds",
            0,
            r"'num-server-rounds' must be >= 1, got 0 \(RunSettings.num_server_rounds\)",
        ),
        (RunSettings, "fraction_train", 1.5, r"'fraction-train' must be in \(0, 1\]"),
        (RunSettings, "max_cached_clients", 0, r"'max-cached-clients' must be >= 1"),
        (RunSettings, "round_timeout", 0.0, r"'round-timeout' must be a finite number > 0"),
        (RunSettings, "checkpoint_interval", -1, r"'checkpoint-interval' must be >= 0"),
        (RunSettings, "device", "tpu", r"'device' must be auto, cpu, cuda, cuda:N, got 'tpu'"),
        (RunSettings, "model", "vgg", r"'model' must be one of .*got 'vgg'"),
    ],
)
def test_a_bad_setting_fails_when_built_naming_its_field(record, field, value, message):
    # Execute / Assert: refused at construction, not rounds later inside a strategy
    with pytest.raises(ValueError, match=message):
        record(**{field: value})


def test_a_real_number_setting_takes_an_integer_as_torch_optim_does():
    # Execute
    settings = AlignmentSettings(lr=1)
    # Assert
    assert settings.lr == 1.0 and isinstance(settings.lr, float)


def test_a_run_config_error_names_the_key_of_a_nested_record():
    # Prepare
    config = {**RunSettings().to_config(), "align-interval": 0}
    # Execute / Assert: the run config's key, as the user typed it
    with pytest.raises(ValueError, match="'align-interval' must be >= 1"):
        RunSettings.from_run_config(config)


def test_run_config_still_names_a_missing_key():
    # Prepare: the defaults, less one key
    config = RunSettings().to_config()
    del config["batch-size"]
    # Execute / Assert: a run config must carry every key, defaults or not
    with pytest.raises(ValueError, match="lacks 'batch-size'"):
        RunSettings.from_run_config(config)


@pytest.mark.parametrize(
    ("keyword", "value", "message"),
    [
        ("fraction_train", 0.0, r"'fraction_train' must be in \(0, 1\], got 0.0"),
        ("min_train_nodes", 0, r"'min_train_nodes' must be >= 1"),
        ("min_available_nodes", 1, r"'min_available_nodes' must be >= min_train_nodes \(2\), got 1"),
        ("max_rounds_without_replies", 0, r"'max_rounds_without_replies' must be >= 1"),
        ("node_wait_timeout", -1.0, r"'node_wait_timeout' must be a finite number > 0"),
        ("max_examples", 0, r"'max_examples' must be >= 1"),
        ("warm_up_attempts", 0, r"'warm_up_attempts' must be >= 1"),
        ("fidelity_samples", -1, r"'fidelity_samples' must be >= 0"),
    ],
)
def test_a_strategy_refuses_a_bad_keyword_when_built_naming_it(keyword, value, message):
    # Prepare: a user's own split, as the docs show it
    spec = SplitSpec(
        client_model=lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU()),
        server_model=lambda: nn.Linear(8, 3),
        aux_model=lambda: nn.Linear(8, 3),
        cut_shape=(8,),
        num_classes=3,
    )
    # Execute / Assert
    with pytest.raises(ValueError, match=message):
        spec.strategy(training=LocalTraining(), **{"min_train_nodes": 2, keyword: value})
