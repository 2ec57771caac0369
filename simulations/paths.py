"""Where the repository and the data shared beside it lie, for the runners, benchmarks and tests."""

from __future__ import annotations

from pathlib import Path

from fsl_sage_flwr.data import dataset_folders, describe_search, find_idx_folder

#: The repository's root folder (the Flower app project that ``flwr run`` is given).
PROJECT_DIR = Path(__file__).resolve().parent.parent
#: Datasets kept beside the repository (``../shared/data``: the real Fashion-MNIST and MNIST IDX files).
SHARED_DATA = PROJECT_DIR.parent / "shared" / "data"


def shared_fashion_mnist() -> str:
    """The Fashion-MNIST IDX folder under :data:`SHARED_DATA` (or the system's), for the benchmarks.

    Raises
    ------
    SystemExit
        Naming every folder searched and the ``--data-dir`` option, when none holds the files.
    """
    folder = find_idx_folder("fashion-mnist", SHARED_DATA)
    if folder is None:
        searched = describe_search(dataset_folders("fashion-mnist", SHARED_DATA), SHARED_DATA)
        raise SystemExit(f"Fashion-MNIST not found in {searched}\npass --data-dir")
    return str(folder)
