"""Each results row also to an experiment tracker: TensorBoard or MLflow, in the run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from fsl_sage_flwr.extras import import_extra

#: The values of the run-config key ``track``: off, or the tracker each row also goes to.
TRACKERS = ("", "tensorboard", "mlflow")


class RowTracker(Protocol):
    """Receives every results row as it is written; closed when the run ends."""

    def write(self, row: dict[str, Any]) -> None:
        """Record ``row``'s numbers at its round."""

    def close(self) -> None:
        """Flush and release the tracker."""


class TensorBoardTracker:
    """Every numeric field of a row as a scalar at the row's round, in ``<run folder>/tensorboard``."""

    def __init__(self, folder: Path) -> None:
        tensorboard = import_extra("torch.utils.tensorboard", "tracking", "run config track = 'tensorboard'")
        self.log_dir = folder / "tensorboard"
        self._writer = tensorboard.SummaryWriter(log_dir=str(self.log_dir))

    def write(self, row: dict[str, Any]) -> None:
        """Add each number of ``row`` as a scalar at step ``row["round"]``."""
        for name, value in numeric_fields(row).items():
            self._writer.add_scalar(name, value, global_step=int(row["round"]))
        self._writer.flush()

    def close(self) -> None:
        """Close the event file."""
        self._writer.close()


class MLflowTracker:
    """Every numeric field of a row as an MLflow metric at the row's round, in ``<run folder>/mlflow.db``."""

    def __init__(self, folder: Path, run_name: str) -> None:
        self._mlflow = import_extra("mlflow", "tracking", "run config track = 'mlflow'")
        # MLflow's file store is frozen and refused by default: a SQLite file in the run folder instead.
        self.tracking_uri = f"sqlite:///{(folder / 'mlflow.db').resolve()}"
        self._mlflow.set_tracking_uri(self.tracking_uri)
        self._run = self._mlflow.start_run(run_name=run_name)

    def write(self, row: dict[str, Any]) -> None:
        """Log the numbers of ``row`` at step ``row["round"]``."""
        self._mlflow.log_metrics(numeric_fields(row), step=int(row["round"]), run_id=self._run.info.run_id)

    def close(self) -> None:
        """End the MLflow run."""
        self._mlflow.end_run()


def open_tracker(kind: str, folder: Path, run_name: str) -> RowTracker | None:
    """The tracker the run config's ``track`` names, writing under ``folder``; None when off.

    Raises
    ------
    ValueError
        For a ``kind`` not in :data:`TRACKERS`.
    MissingExtraError
        When the tracker's package is not installed, naming the extra ``tracking``.
    """
    if kind not in TRACKERS:
        raise ValueError(f"run config 'track' must be one of {list(TRACKERS)}, got {kind!r}")
    if kind == "tensorboard":
        return TensorBoardTracker(folder)
    if kind == "mlflow":
        return MLflowTracker(folder, run_name)
    return None


def numeric_fields(row: dict[str, Any]) -> dict[str, float]:
    """The fields of ``row`` that are plain numbers (booleans, texts and nested records left out)."""
    return {
        name: float(value)
        for name, value in row.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and name != "round"
    }
