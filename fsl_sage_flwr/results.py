"""Where a run's results land, and the JSON-lines file that holds them."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


def resolve_output_dir(output_dir: str, run_name: str, algorithm: str) -> Path:
    """Return the folder a run writes to, creating it.

    Flower runs the ServerApp from its installed copy, in the working directory
    of the SuperLink, so a relative path would land somewhere unexpected: a
    relative ``output_dir`` is taken under the user's home folder instead.
    """
    base = Path(output_dir).expanduser()
    if not base.is_absolute():
        base = Path.home() / base
    name = run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{algorithm}"
    folder = base / name
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class ResultsWriter:
    """Append one JSON object per line to ``results.jsonl`` in a run folder."""

    FILE_NAME = "results.jsonl"

    def __init__(self, folder: Path) -> None:
        self.path = folder / self.FILE_NAME
        self.path.write_text("")

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row`` and flush, so a crashed run keeps its earlier rounds."""
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")


def read_results(path: Path) -> list[dict[str, Any]]:
    """Return the rows of a ``results.jsonl`` file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
