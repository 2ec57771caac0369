"""A finished run's trained network, loaded from its run folder for inference in one call."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from fsl_sage_flwr.core.checkpoint import safe_load
from fsl_sage_flwr.core.models import build_full_model
from fsl_sage_flwr.plugin import SplitSpec

#: The files a run folder holds its final models in: the split algorithms' two parts, FedAvg's whole network.
SPLIT_FILES = ("client_model.pt", "server_model.pt")
FULL_FILE = "full_model.pt"


def load_trained_model(run_folder: str | Path, spec: SplitSpec) -> nn.Module:
    """Return the run's trained network, client part then server part, in eval mode.

    The ServerApp saves the final models of every algorithm in the run folder
    (``<output-dir>/<run-name>``): ``client_model.pt`` and
    ``server_model.pt`` for FSL-SAGE (Nair et al., ICML 2025), CSE-FSL and
    SplitFed, ``full_model.pt`` for FedAvg. Each file's SHA-256 is checked
    before it is read.

    Parameters
    ----------
    run_folder : str or Path
        The folder holding the run's ``results.jsonl`` and final models.
    spec : SplitSpec
        The split the run trained (for a built-in model,
        :func:`fsl_sage_flwr.builtin_spec`); it gives the modules the weights load into.

    Returns
    -------
    nn.Module
        ``nn.Sequential(client, server)`` with the trained weights, on the CPU.

    Raises
    ------
    FileNotFoundError
        When the folder holds neither model layout, naming what was looked for.
    DamagedFileError
        When a model file does not match its hash.
    """
    folder = Path(run_folder)
    full = build_full_model(spec.build())
    if (folder / FULL_FILE).is_file():
        full.load_state_dict(safe_load(folder / FULL_FILE))
    elif all((folder / name).is_file() for name in SPLIT_FILES):
        full.client.load_state_dict(safe_load(folder / SPLIT_FILES[0]))
        full.server.load_state_dict(safe_load(folder / SPLIT_FILES[1]))
    else:
        raise FileNotFoundError(
            f"{folder} holds no trained model: looked for {FULL_FILE} or {' and '.join(SPLIT_FILES)} "
            "(a run saves them when it completes)"
        )
    return full.eval()
