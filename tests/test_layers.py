"""The package's layers: the core needs neither Flower nor the apps; the transport needs no app."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import fsl_sage_flwr.core
import fsl_sage_flwr.transport

PROJECT = Path(__file__).resolve().parents[1]
APP_LAYERS = ("fsl_sage_flwr.app", "fsl_sage_flwr.strategies", "fsl_sage_flwr.clients", "simulations")


def _modules_loaded_by(package) -> list[str]:
    """Import every module of ``package`` in a fresh interpreter; return what got loaded."""
    names = [f"{package.__name__}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
    code = (
        "import importlib, json, sys\n"
        f"for name in {names!r}: importlib.import_module(name)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        (fsl_sage_flwr.core, ("flwr", "flwr_datasets", "fsl_sage_flwr.transport", *APP_LAYERS)),
        (fsl_sage_flwr.transport, APP_LAYERS),
    ],
    ids=["core", "transport"],
)
def test_a_lower_layer_imports_nothing_from_the_layers_above(package, forbidden):
    # Execute
    loaded = _modules_loaded_by(package)
    # Assert
    offending = [
        m
        for m in loaded
        if m.split(".")[0] in forbidden or m.startswith(tuple(f"{f}." for f in forbidden)) or m in forbidden
    ]
    assert not offending, offending
