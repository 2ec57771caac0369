"""Run and round deadlines: a run whose nodes hang still ends, completed or failed with the cause named."""

from __future__ import annotations

import threading
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict

from fsl_sage_flwr.app.client_app import app as client_app
from fsl_sage_flwr.app.config import RunSettings, run_config_reference
from fsl_sage_flwr.app.deadlines import DeadlineGrid, NoProgressError, RunDeadlineExceeded
from fsl_sage_flwr.app.results import read_results
from fsl_sage_flwr.app.server_app import app as server_app
from fsl_sage_flwr.strategies.setup_drops import SetupDropError
from simulations.in_process import run_in_process

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class RecordingGrid:
    """Answers nothing; records the timeout of every exchange, and lets the clock run meanwhile."""

    def __init__(self, clock: FakeClock, seconds_per_exchange: float = 0.0) -> None:
        self.clock = clock
        self.seconds_per_exchange = seconds_per_exchange
        self.timeouts: list[float | None] = []

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        self.timeouts.append(timeout)
        self.clock.now += self.seconds_per_exchange
        return []

    def get_node_ids(self) -> list[int]:
        return [1, 2]


def _message() -> Message:
    return Message(content=RecordDict(), dst_node_id=1, message_type="train")


def test_each_exchange_waits_at_most_the_round_timeout():
    # Prepare
    clock = FakeClock()
    inner = RecordingGrid(clock, seconds_per_exchange=7.0)
    grid = DeadlineGrid(inner, round_timeout=10.0, clock=clock)  # type: ignore[arg-type]

    # Execute
    grid.start_round(1)
    grid.send_and_receive([_message()], timeout=3600.0)
    grid.send_and_receive([_message()], timeout=None)
    grid.send_and_receive([_message()], timeout=4.0)

    # Assert: a strategy's own shorter wait is kept
    assert inner.timeouts == [10.0, 10.0, 4.0]


def test_the_run_deadline_bounds_exchanges_and_then_fails_the_run_naming_it():
    # Prepare: a 30 s run of 20 s rounds, each exchange 15 s long
    clock = FakeClock()
    inner = RecordingGrid(clock, seconds_per_exchange=15.0)
    grid = DeadlineGrid(inner, round_timeout=20.0, run_timeout=30.0, clock=clock)  # type: ignore[arg-type]
    grid.start_round(1)
    grid.send_and_receive([_message()], timeout=None)
    grid.start_round(2)

    # Execute / Assert: round 2 may wait only the 15 s left to the run
    with pytest.raises(RunDeadlineExceeded, match=r"'run-timeout' of 30 s in round 2"):
        grid.send_and_receive([_message()], timeout=None)
    assert inner.timeouts == [20.0, 15.0]
    with pytest.raises(RunDeadlineExceeded):
        grid.get_node_ids()


def test_rounds_without_progress_fail_the_run_after_the_limit():
    # Prepare
    grid = DeadlineGrid(RecordingGrid(FakeClock()), round_timeout=1.0, max_rounds_without_progress=2)  # type: ignore[arg-type]

    # Execute: a round with progress resets the count
    grid.record_progress(1, progressed=False)
    grid.record_progress(2, progressed=True)
    grid.record_progress(3, progressed=False)

    # Assert
    with pytest.raises(NoProgressError, match="round 4: 2 rounds in a row"):
        grid.record_progress(4, progressed=False)


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({"round_timeout": 0.0}, "round_timeout"),
        ({"round_timeout": 1.0, "run_timeout": -1.0}, "run_timeout"),
        ({"round_timeout": 1.0, "max_rounds_without_progress": 0}, "max_rounds_without_progress"),
    ],
)
def test_bad_deadline_settings_are_refused_naming_the_field(keywords, message):
    with pytest.raises(ValueError, match=message):
        DeadlineGrid(RecordingGrid(FakeClock()), **keywords)  # type: ignore[arg-type]


def test_run_timeout_is_a_documented_run_config_key_and_is_checked():
    # Prepare
    keys = {entry.key: entry for entry in run_config_reference()}

    # Execute / Assert
    assert keys["run-timeout"].default == 0.0
    assert "lost nodes" in keys["round-timeout"].help
    assert "ends failed" in keys["run-timeout"].help
    with pytest.raises(ValueError, match="'run-timeout' must be a finite number >= 0"):
        RunSettings(run_timeout=-5.0)


class HangingClientApp:
    """The package's ClientApp, except that the nodes in ``hanging`` never answer.

    The grid runs an exchange's nodes in threads; the package's ClientApp shares
    models between the nodes of one process, so the others take turns.
    """

    def __init__(self, hanging: set[int], release: threading.Event) -> None:
        self.hanging = hanging
        self.release = release
        self._turn = threading.Lock()

    def __call__(self, message: Message, context: Context) -> Message:
        if int(context.node_config["partition-id"]) in self.hanging:
            self.release.wait()
            raise RuntimeError("released after the test")  # a reply nobody reads any more
        with self._turn:
            return client_app(message, context)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Lets the hanging nodes' threads end once the test is over."""
    event = threading.Event()
    yield event
    event.set()


def _config(tmp_path: Path, **overrides: object) -> dict:
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    config.update(
        {
            "num-server-rounds": 2,
            "min-available-nodes": 3,
            "align-epochs": 1,
            "train-subset": 300,
            "fidelity-samples": 0,
            "round-timeout": 8.0,
            "warm-up-attempts": 1,
            "output-dir": str(tmp_path),
            "run-name": "run",
            **overrides,
        }
    )
    return config


@pytest.mark.slow
def test_a_run_with_one_hanging_node_records_every_round_then_fails_naming_it(tmp_path, release):
    # Prepare: node 2 of 3 never answers
    config = _config(tmp_path)

    # Execute
    with pytest.raises(SetupDropError, match=r"never contributed to the run: node \d+: no reply within the round"):
        run_in_process(server_app, HangingClientApp({2}, release), config, 3, honour_timeout=True)

    # Assert: every round was recorded, trained by the two nodes that answered, before the run failed
    rows = read_results(tmp_path / "run" / "results.jsonl")
    assert [row["round"] for row in rows] == [0, 1, 2]


@pytest.mark.slow
def test_a_partial_federation_with_one_hanging_node_completes_without_it(tmp_path, release):
    # Prepare: node 2 of 3 never answers; the deployment accepts running without it
    config = _config(tmp_path, **{"allow-partial-federation": True})

    # Execute
    run_in_process(server_app, HangingClientApp({2}, release), config, 3, honour_timeout=True)

    # Assert
    rows = read_results(tmp_path / "run" / "results.jsonl")
    assert [row["round"] for row in rows] == [0, 1, 2]


def test_a_run_whose_nodes_all_hang_ends_failed_at_its_run_timeout(tmp_path, release):
    # Prepare: exchanges of 1 s, a run of 2 s, and no limit on rounds without replies that would end it first
    config = _config(
        tmp_path, algorithm="cse-fsl", **{"round-timeout": 1.0, "run-timeout": 2.0, "max-rounds-without-replies": 100}
    )
    config["num-server-rounds"] = 50

    # Execute / Assert
    with pytest.raises(RunDeadlineExceeded, match="'run-timeout' of 2 s in round"):
        run_in_process(server_app, HangingClientApp({0, 1, 2}, release), config, 3, honour_timeout=True)


def test_a_fedavg_run_whose_nodes_all_hang_ends_failed_naming_the_stalled_rounds(tmp_path, release):
    # Prepare: Flower's own FedAvg would go on aggregating nothing
    config = _config(tmp_path, algorithm="fedavg", **{"round-timeout": 1.0, "max-rounds-without-replies": 2})
    config["num-server-rounds"] = 5

    # Execute / Assert
    with pytest.raises(NoProgressError, match="round 2: 2 rounds in a row in which no node finished"):
        run_in_process(server_app, HangingClientApp({0, 1, 2}, release), config, 3, honour_timeout=True)
