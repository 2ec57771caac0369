"""An allow-list unpickler for dataset pickles: containers, scalars and NumPy arrays only."""

from __future__ import annotations

import codecs
import functools
import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np


def _numpy_core_attr(submodule: str, attr: str) -> Any:
    """Look up ``attr`` in ``numpy._core.<submodule>`` (NumPy 2) or ``numpy.core`` (NumPy 1)."""
    try:
        module = importlib.import_module(f"numpy._core.{submodule}")
    except ImportError:
        module = importlib.import_module(f"numpy.core.{submodule}")
    return getattr(module, attr)


@functools.cache
def _allowed_pickle_globals() -> dict[tuple[str, str], Any]:
    """Map the only globals a dataset pickle may name (those rebuilding arrays) to objects."""
    reconstruct = _numpy_core_attr("multiarray", "_reconstruct")
    frombuffer = _numpy_core_attr("numeric", "_frombuffer")  # used by pickle protocol 5
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 writes bytes as _codecs.encode(str, "latin1") in protocols 0-2.
        ("_codecs", "encode"): codecs.encode,
    }
    # Files pickled under NumPy 1 name numpy.core, under NumPy 2 numpy._core.
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that builds dicts, lists, bytes, numbers and NumPy arrays, nothing else.

    A pickle can call any importable function while loading; refusing every global but
    NumPy's array constructors (and the codec call Python 3 writes for bytes) keeps a
    tampered dataset file from running code.
    """

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_pickle_globals().get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return allowed


def load_array_pickle(path: str | Path) -> Any:
    """Load a pickle that may hold only containers, scalars, bytes and NumPy arrays.

    Parameters
    ----------
    path : str or Path
        The file, e.g. a batch of the CIFAR "python version".

    Returns
    -------
    Any
        The unpickled object. Strings pickled by Python 2 come back as ``bytes``.

    Raises
    ------
    pickle.UnpicklingError
        If the pickle references any other global (such as ``os.system``) or is corrupt;
        the message names the file.
    """
    path = Path(path)
    with path.open("rb") as f:
        try:
            # encoding="bytes": the official CIFAR batches were pickled by Python 2.
            return _ArrayOnlyUnpickler(f, encoding="bytes").load()
        except Exception as exc:  # a corrupt pickle fails in many ways: name the file
            raise pickle.UnpicklingError(f"{path}: {exc}") from exc
