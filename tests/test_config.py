"""Tests of the run settings' defaults: one source, which pyproject.toml's run config repeats."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from fsl_sage_flwr.app.config import RunSettings
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
    assert settings.local_training() == LocalTraining()
    assert settings.alignment() == AlignmentSettings()


def test_run_config_still_names_a_missing_key():
    # Prepare: the defaults, less one key
    config = RunSettings().to_config()
    del config["batch-size"]
    # Execute / Assert: a run config must carry every key, defaults or not
    with pytest.raises(ValueError, match="lacks 'batch-size'"):
        RunSettings.from_run_config(config)
