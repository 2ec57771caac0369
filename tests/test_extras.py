"""The optional extras: a missing package is reported with the extra that installs it."""

from __future__ import annotations

import tomllib

import pytest

from fsl_sage_flwr.extras import EXTRAS, MissingExtraError, import_extra
from simulations.paths import PROJECT_DIR


def test_a_missing_package_names_the_extra_and_its_install_command():
    # Execute
    with pytest.raises(MissingExtraError) as info:
        import_extra("no_such_package_here.sub", "data", "the dataset 'x'")

    # Assert
    message = str(info.value)
    assert "the dataset 'x'" in message and "'no_such_package_here'" in message
    assert 'pip install "fsl-sage-flwr[data]"' in message
    assert isinstance(info.value, ImportError)


def test_an_installed_package_is_returned():
    # Execute
    module = import_extra("json", "plots", "anything")

    # Assert
    assert module.dumps([1]) == "[1]"


def test_an_unknown_extra_is_refused():
    # Execute / Assert
    with pytest.raises(ValueError, match="unknown extra 'nope'"):
        import_extra("json", "nope", "anything")


def test_the_extras_named_in_messages_are_the_ones_pyproject_declares():
    # Prepare
    project = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())["project"]
    declared = project["optional-dependencies"]

    # Execute
    names = {extra: sorted(r.split(">")[0].split("=")[0] for r in declared[extra]) for extra in EXTRAS}

    # Assert: the same extras with the same packages; the plugin itself needs only flwr, torch, numpy
    assert names == {extra: sorted(packages) for extra, packages in EXTRAS.items()}
    assert sorted(r.split("=")[0].split(">")[0] for r in project["dependencies"]) == ["flwr", "numpy", "torch"]
