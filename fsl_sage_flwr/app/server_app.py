"""Flower ServerApp entry: builds the run's algorithm from the run config and runs it."""

from __future__ import annotations

import random
from logging import INFO
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fsl_sage_flwr.app.algorithms import get_algorithm
from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.app.deadlines import DeadlineGrid
from fsl_sage_flwr.app.finite import NonFiniteWatch
from fsl_sage_flwr.app.results import (
    CLIENT_STATE_DIR,
    ResultsWriter,
    RoundRecorder,
    RunFolderError,
    check_fresh_results,
    refuse_links,
    run_folder,
)
from fsl_sage_flwr.app.resume_bytes import ResumeAccountingGrid
from fsl_sage_flwr.app.resume_checks import check_resume_state
from fsl_sage_flwr.app.rounds import run_rounds
from fsl_sage_flwr.app.run_lock import RunLock
from fsl_sage_flwr.app.run_split import server_split
from fsl_sage_flwr.app.tracking import open_tracker
from fsl_sage_flwr.core.checkpoint import (
    CHECKPOINT_FILE,
    FORMAT_VERSION,
    atomic_save,
    rng_state,
    safe_load,
    set_rng_state,
)
from fsl_sage_flwr.core.training import derive_seed
from fsl_sage_flwr.strategies.node_wait import wait_for_nodes
from fsl_sage_flwr.transport.ledger import ByteLedger, MeteredGrid
from fsl_sage_flwr.transport.metrics import TrainMetricsTap

#: keys a resumed run may change; every other key must match the checkpoint's
RESUMABLE_KEYS = frozenset(
    {
        "num-server-rounds",
        "resume",
        "checkpoint-interval",
        "max-cached-clients",
        "client-threads",
        "output-dir",
        "run-name",
        "round-timeout",
        "run-timeout",
        "track",
    }
)

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the selected algorithm for ``num-server-rounds`` rounds; save results and models."""
    settings = RunSettings.from_run_config(context.run_config)
    folder = run_folder(settings.output_dir, settings.run_name, settings.algorithm)
    folder.mkdir(parents=True, exist_ok=True)
    # One writer per folder: a second run or resume is refused before it reads or writes anything.
    with RunLock(folder):
        _run(grid, settings, folder, context)


def _run(grid: Grid, settings: RunSettings, folder: Path, context: Context) -> None:
    """Run the rounds into ``folder``, whose lock this process holds."""
    algorithm = get_algorithm(settings.algorithm)
    # Checked before anything is read or written: no link leads a write outside, no earlier run is overwritten.
    refuse_links(folder)
    checkpoint = _read_checkpoint(folder, settings) if settings.resume else None
    if checkpoint is None:
        check_fresh_results(folder)
    random.seed(settings.training.seed)  # Flower's FedAvg samples nodes with `random`
    torch.manual_seed(derive_seed(settings.training.seed, "server-init"))
    run_split = server_split(settings, context)
    tap = TrainMetricsTap()
    ledger = ByteLedger()
    setup = algorithm.build_server(settings, run_split, tap, state_dir=folder / CLIENT_STATE_DIR, ledger=ledger)
    setup.model_privacy = settings.model_privacy
    # Layers around Flower's grid, outside in: deadlines, resume accounting, byte metering.
    metered: Grid = MeteredGrid(grid, ledger)
    if checkpoint is not None:  # nodes back with new ids are asked who they are: not the algorithm's bytes
        metered = ResumeAccountingGrid(metered, ledger, checkpoint["server"])
    deadlines = DeadlineGrid(
        metered,
        settings.round_timeout,
        settings.run_timeout,
        max_rounds_without_progress=settings.max_rounds_without_replies,
    )
    log(INFO, "%s: results go to %s", algorithm.description, folder)
    arrays = setup.initial_arrays
    rows: list[dict[str, Any]] = []
    first_round = 1
    if checkpoint is not None:
        arrays = ArrayRecord(checkpoint["arrays"])
        setup.load_state_dict(checkpoint["server"])
        ledger.load_state_dict(checkpoint["ledger"])
        tap.last = MetricRecord(checkpoint["train_metrics"])
        set_rng_state(checkpoint["rng"])
        rows = list(checkpoint["rows"])
        first_round = int(checkpoint["round"]) + 1
        log(INFO, "resuming from the checkpoint of round %d in %s", first_round - 1, folder)
    tracker = open_tracker(settings.track, folder, folder.name)
    writer = ResultsWriter(folder, resume_rows=rows if checkpoint is not None else None, tracker=tracker)
    watch = NonFiniteWatch(settings.num_server_rounds, rows)
    recorder = RoundRecorder(
        settings.algorithm, setup, ledger, writer, tap, rows, watch=watch, num_rounds=settings.num_server_rounds
    )

    def after_round(server_round: int, arrays: ArrayRecord) -> None:
        interval = settings.checkpoint_interval
        if interval and server_round % interval == 0 and server_round < settings.num_server_rounds:
            state = {
                "format": FORMAT_VERSION,
                "round": server_round,
                "settings": settings.to_config(),
                "arrays": arrays.to_torch_state_dict(),
                "server": setup.state_dict(),
                "ledger": ledger.state_dict(),
                "train_metrics": dict(tap.last),
                "rng": rng_state(),
                "rows": recorder.rows,
            }
            atomic_save(state, folder / CHECKPOINT_FILE)
            setup.checkpoint_saved()
            log(INFO, "round %d: checkpoint written to %s", server_round, folder / CHECKPOINT_FILE)

    # Flower's own FedAvg would wait for nodes without end; every algorithm waits here first.
    wait_for_nodes(deadlines, settings.min_available_nodes, settings.node_wait_timeout)
    if first_round > settings.num_server_rounds:
        log(INFO, "the checkpoint already holds round %d, the last", settings.num_server_rounds)
    try:
        final_arrays = run_rounds(
            setup.strategy,
            deadlines,
            arrays,
            first_round=first_round,
            num_rounds=settings.num_server_rounds,
            timeout=settings.round_timeout,
            train_config=ConfigRecord(settings.training.to_config()),  # read by Flower's FedAvg only
            evaluate_fn=recorder,
            after_round=after_round,
            deadlines=deadlines,
        )
    finally:
        if tracker is not None:
            tracker.close()
    for name, state in setup.final_models(final_arrays).items():
        atomic_save(state, folder / f"{name}.pt")
    log(INFO, "final models and %s saved in %s", ResultsWriter.FILE_NAME, folder)


def _read_checkpoint(folder: Path, settings: RunSettings) -> dict[str, Any]:
    """Load the run folder's checkpoint for ``resume``, checking it fits the settings.

    Raises
    ------
    RunFolderError
        When there is no checkpoint, or it was written with other settings.
    """
    path = folder / CHECKPOINT_FILE
    if not path.exists():
        raise RunFolderError(
            f"resume=true but {path} does not exist; a run writes checkpoints when checkpoint-interval > 0"
        )
    checkpoint = safe_load(path)
    if checkpoint.get("format") != FORMAT_VERSION:
        raise RunFolderError(f"{path} has format {checkpoint.get('format')}, this version reads {FORMAT_VERSION}")
    saved, now = checkpoint["settings"], settings.to_config()
    # With upload DP off, ``dp-rounds`` (resolved to the run's length when 0) plans nothing.
    ignored = {"dp-rounds"} if not now.get("dp-clip") and not saved.get("dp-clip") else set()
    differing = sorted(k for k in now if k not in RESUMABLE_KEYS | ignored and saved.get(k) != now[k])
    if differing:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now[k]!r}" for k in differing)
        raise RunFolderError(f"resume: the run config differs from the checkpoint's in {details}")
    if int(checkpoint["round"]) > settings.num_server_rounds:
        raise RunFolderError(
            f"resume: the checkpoint holds round {checkpoint['round']}, "
            f"beyond num-server-rounds={settings.num_server_rounds}"
        )
    check_resume_state(checkpoint, str(path))
    return checkpoint
