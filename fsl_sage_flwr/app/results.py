"""Where a run's results land, and the JSON-lines file that holds them."""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from logging import INFO
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, TextIO

from flwr.app import ArrayRecord, MetricRecord
from flwr.common.logger import log

from fsl_sage_flwr.app.finite import NonFiniteWatch
from fsl_sage_flwr.transport.ledger import ByteLedger
from fsl_sage_flwr.transport.metrics import PEAK_MEMORY_KEY, TrainMetricsTap

if TYPE_CHECKING:
    from fsl_sage_flwr.app.algorithms import ServerSetup

MIB = 1024 * 1024
#: the folder, inside a run folder, of the per-client files
CLIENT_STATE_DIR = "client-state"


class RunFolderError(ValueError):
    """A run folder that may not be used: outside ``output-dir``, or holding an earlier run."""


def run_folder(output_dir: str, run_name: str, algorithm: str) -> Path:
    """Return the folder a run writes to, without creating anything.

    Flower runs the ServerApp from its installed copy, in the working directory
    of the SuperLink, so a relative path would land somewhere unexpected: a
    relative ``output_dir`` is taken under the user's home folder instead.

    Raises
    ------
    RunFolderError
        When ``run_name`` is not a plain relative path inside ``output_dir``
        (absolute, ``..``, or resolving outside it through a link).
    """
    base = Path(output_dir).expanduser()
    if not base.is_absolute():
        base = Path.home() / base
    name = run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{algorithm}"
    parts = PurePath(name).parts
    if PurePath(name).is_absolute() or name.startswith("~") or not parts or any(p in ("..", ".") for p in parts):
        raise RunFolderError(
            f"run-name {name!r} must be a relative folder name inside output-dir (no absolute path, no '..', no '.')"
        )
    folder = base / name
    resolved_base = base.resolve()
    resolved = folder.resolve()
    if resolved == resolved_base or resolved_base not in resolved.parents:
        raise RunFolderError(f"run-name {name!r} leads to {resolved}, outside output-dir {resolved_base}")
    return folder


def resolve_output_dir(output_dir: str, run_name: str, algorithm: str) -> Path:
    """Return the folder a run writes to (see :func:`run_folder`), creating it."""
    folder = run_folder(output_dir, run_name, algorithm)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class ResultsWriter:
    """Append one JSON object per line to ``results.jsonl`` in a run folder.

    A fresh run refuses a folder whose ``results.jsonl`` already holds rows, so
    a rerun with the same run name never destroys earlier results. A resumed run
    passes the rows its checkpoint holds: the file is rewritten, atomically, to
    exactly those rows (a round recorded after the checkpoint is recomputed),
    then appended to. A ``tracker`` (see ``fsl_sage_flwr.app.tracking``) gets
    every row written from then on.
    """

    FILE_NAME = "results.jsonl"

    def __init__(
        self, folder: Path, resume_rows: list[dict[str, Any]] | None = None, tracker: Any | None = None
    ) -> None:
        self.path = folder / self.FILE_NAME
        self.tracker = tracker
        if resume_rows is None:
            check_fresh_results(folder)
            with _open_no_follow(self.path, os.O_TRUNC):
                pass
        else:
            _atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in resume_rows))

    def write(self, row: dict[str, Any]) -> None:
        """Append ``row`` and flush, so a crashed run keeps its earlier rounds."""
        with _open_no_follow(self.path, os.O_APPEND) as handle:
            handle.write(json.dumps(row, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        if self.tracker is not None:
            self.tracker.write(row)


class RoundRecorder:
    """Record each evaluated round: one results row, one log line, then the next round's bytes.

    Pass it as ``evaluate_fn`` of the round loop. For round ``r`` it evaluates
    the global arrays, reads round ``r``'s bytes from the ledger, times the
    round, appends the row to ``results.jsonl`` and to :attr:`rows`, and books
    every later byte to round ``r + 1``.

    Parameters
    ----------
    algorithm : str
        The run's algorithm, written in every row.
    setup : ServerSetup
        The algorithm's server: its evaluation, memory and per-round figures.
    ledger : ByteLedger
        The run's byte ledger.
    writer : ResultsWriter
        Where the rows go.
    tap : TrainMetricsTap
        The last aggregated train metrics (the clients' peak memory).
    rows : list of dict, optional
        Rows of earlier rounds (a resumed run's checkpoint).
    clock : Callable[[], float]
        Seconds of a monotonic clock.
    watch : NonFiniteWatch, optional
        Flags non-finite rounds in their rows, and fails the run once the row is written.
    num_rounds : int, optional
        The run's last round: each log line then says when the run should end,
        from the mean duration of the rounds this process ran.
    """

    def __init__(
        self,
        algorithm: str,
        setup: ServerSetup,
        ledger: ByteLedger,
        writer: ResultsWriter,
        tap: TrainMetricsTap,
        rows: list[dict[str, Any]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        watch: NonFiniteWatch | None = None,
        num_rounds: int | None = None,
    ) -> None:
        self.algorithm = algorithm
        self.setup = setup
        self.ledger = ledger
        self.writer = writer
        self.tap = tap
        self.rows: list[dict[str, Any]] = list(rows or [])
        self._clock = clock
        self._round_start = clock()
        self.watch = watch
        self.num_rounds = num_rounds
        self._timed_rounds: list[float] = []  # durations of the rounds run here, round 0 left out

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Evaluate and record ``server_round``; return its test metrics."""
        metrics = self.setup.evaluate(server_round, arrays)
        row = self._row(server_round, metrics)
        if self.watch is not None:
            row.update(self.watch.flags(server_round, float(metrics["loss"]), arrays))
        self.writer.write(row)
        self.rows.append(row)
        # Bytes after this evaluation belong to the next round.
        self.ledger.current_round = server_round + 1
        if server_round >= 1:
            self._timed_rounds.append(row["round_seconds"])
        log(
            INFO,
            "round %d: test %sloss %.4f, %.2f MiB sent so far%s",
            server_round,
            "".join(f"{key} {value:.4f}, " for key, value in metrics.items() if key != "loss"),
            row["loss"],
            row["cumulative_bytes"] / MIB,
            self._eta(server_round),
        )
        if self.watch is not None:
            self.watch.raise_if_failed()  # after the row is written: the results show the round
        return metrics

    def _eta(self, server_round: int) -> str:
        """``", about N s left"`` from the mean round so far; empty without a round count or a timed round."""
        if self.num_rounds is None or not self._timed_rounds or server_round >= self.num_rounds:
            return ""
        left = (self.num_rounds - server_round) * sum(self._timed_rounds) / len(self._timed_rounds)
        return f", about {format_duration(left)} left"

    def _row(self, server_round: int, metrics: MetricRecord) -> dict[str, Any]:
        up, down = self.ledger.round_totals(server_round)
        now = self._clock()
        seconds, self._round_start = now - self._round_start, now
        cumulative = self.ledger.cumulative_bytes(server_round)
        return {
            "algorithm": self.algorithm,
            "round": server_round,
            # The split's metric (accuracy for classes; none, or e.g. perplexity, otherwise), then the loss.
            **{key: value for key, value in metrics.items() if key != "loss"},
            "loss": metrics["loss"],
            "bytes_up": up,
            "bytes_down": down,
            "cumulative_bytes": cumulative,
            "cumulative_gib": cumulative / 1024**3,
            "round_seconds": seconds,
            # Round 0 evaluates the initial model: no client trained yet.
            "client_peak_memory_bytes": int(self.tap.last.get(PEAK_MEMORY_KEY, 0)) if server_round else 0,
            "server_memory_bytes": self.setup.server_memory_bytes(),
            **self.setup.round_details(),
            # An upper bound: a round whose replies were all refused released nothing.
            **({"model_dp_epsilon": privacy.epsilon(server_round)} if (privacy := self.setup.model_privacy) else {}),
            # Only a resumed run's first round may have some (see ResumeAccountingGrid).
            **({"resume_bytes": resumed} if (resumed := self.ledger.resume_bytes(server_round)) else {}),
        }


def check_fresh_results(folder: Path) -> None:
    """Raise RunFolderError if ``folder`` already holds results of a run, or a link in their place."""
    path = folder / ResultsWriter.FILE_NAME
    refuse_links(folder)
    if path.exists() and path.stat().st_size > 0:
        raise RunFolderError(
            f"{path} holds results of an earlier run; choose another run-name, "
            "or set resume=true to continue that run from its checkpoint"
        )


def refuse_links(folder: Path) -> None:
    """Raise RunFolderError if a symbolic link sits where a run writes.

    A run writes only directly in its folder and in its ``client-state``
    folder, so any link there could send a write outside the run folder.
    """
    for parent in (folder, folder / CLIENT_STATE_DIR):
        if parent.is_symlink():
            raise RunFolderError(f"{parent} is a symbolic link; a run folder may hold none where it writes")
        if not parent.is_dir():
            continue
        for path in sorted(parent.iterdir()):
            if path.is_symlink():
                raise RunFolderError(f"{path} is a symbolic link; a run folder may hold none where it writes")


def _open_no_follow(path: Path, flag: int) -> TextIO:
    """Open ``path`` for writing text, refusing to write through a symbolic link at it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | flag | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise RunFolderError(f"{path} is a symbolic link; a run writes only inside its folder") from None
        raise
    return os.fdopen(fd, "w", encoding="utf-8")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def read_results(path: Path) -> list[dict[str, Any]]:
    """Return the rows of a ``results.jsonl`` file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def format_duration(seconds: float) -> str:
    """``seconds`` as a person reads it: ``"45 s"``, ``"12 min 5 s"``, ``"3 h 20 min"``."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {secs} s" if minutes else f"{secs} s"
