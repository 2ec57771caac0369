"""Where the repository and the data shared beside it lie, for the runners, benchmarks and tests."""

from __future__ import annotations

from pathlib import Path

#: The repository's root folder (the Flower app project that ``flwr run`` is given).
PROJECT_DIR = Path(__file__).resolve().parent.parent
#: Datasets kept beside the repository (``../shared/data``: the real Fashion-MNIST and MNIST IDX files).
SHARED_DATA = PROJECT_DIR.parent / "shared" / "data"
