"""Run the app through `flwr run` on a private local SuperLink, and fail loudly.

``flwr run . --stream`` exits 0 even when the run failed, and leaves its local
SuperLink running. This wrapper gives each call its own Flower home folder and
ports, waits for the run to end, checks that it finished ``completed`` and that
its results file holds the last round, stops the SuperLink, and exits non-zero
otherwise. On SIGINT or SIGTERM it stops the run (``flwr stop``), ends every
process it started (SuperLink, SuperExec, simulation, Ray), removes its Flower
home folder and exits with 128 + the signal number. A silent or stuck run is
stopped at ``--timeout`` all the same, and a watcher process stops the run's
processes should the wrapper itself be killed (SIGKILL); in both cases, and on
SIGINT or SIGTERM, the run folder gets an ``interrupted.json`` saying why.

Usage::

    python -m simulations.flwr_run [--num-supernodes 10] [--output-dir outputs]
                                   [--run-config "num-server-rounds=30 dataset='mnist'"]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fsl_sage_flwr.app.results import ResultsWriter, read_results
from simulations.flower_cli import flwr_executable, free_port, parse_run_config, run_config_arguments
from simulations.local_superlink import SuperLinkStartError, start_local_superlink
from simulations.parent_watch import release_parent_watch, start_parent_watch, write_interrupted
from simulations.paths import PROJECT_DIR
from simulations.processes import (
    alive,
    become_subreaper,
    descendants,
    processes_running,
    processes_with_environment,
    stop_process_group,
    stop_processes,
)
from simulations.streaming import StreamTimeout, stream_command

MIB = 1024 * 1024


class FlwrRunError(RuntimeError):
    """A `flwr run` that did not finish completed with a full results file."""


class RunInterrupted(Exception):
    """SIGINT or SIGTERM arrived while a run was going on; the run was stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise RunInterrupted(signum)


@dataclass(frozen=True)
class FlwrRunOutcome:
    """What one finished run left behind."""

    status: str
    results_path: Path
    rows: list[dict[str, Any]]
    wall_seconds: float
    log: str


def run_app(
    run_config: Mapping[str, Any],
    *,
    num_supernodes: int = 10,
    cpus_per_client: float = 1.0,
    gpus_per_client: float = 0.0,
    timeout: float = 3600.0,
    project_dir: Path = PROJECT_DIR,
    install_dependencies: bool = False,
    echo: bool = True,
    on_line: Callable[[str], None] | None = None,
) -> FlwrRunOutcome:
    """Run the app once through ``flwr run --stream`` and check how it ended.

    Parameters
    ----------
    run_config : Mapping[str, Any]
        Run-config overrides; must include ``output-dir`` (absolute) and ``run-name``.
    num_supernodes : int
        Simulated SuperNodes (clients).
    cpus_per_client : float
        Ray CPUs per ClientApp; 1 runs two clients at once on two cores.
    gpus_per_client : float
        Ray GPUs per ClientApp, a fraction for several clients per GPU (0.25: four);
        0 asks for none.
    timeout : float
        Seconds before the run is abandoned.
    project_dir : Path
        The Flower app project.
    install_dependencies : bool
        Let the SuperLink run its per-run ``uv sync``; off by default, so the run
        uses the packages of this environment.
    echo : bool
        Stream Flower's output to this process's stdout.
    on_line : Callable[[str], None], optional
        Called with every output line (e.g. to show progress).

    Raises
    ------
    FlwrRunError
        If the run failed, timed out, or wrote no result for its last round.
    """
    run_config = _absolute_paths(run_config)
    results_path = Path(run_config["output-dir"]) / str(run_config["run-name"]) / ResultsWriter.FILE_NAME
    home = Path(tempfile.mkdtemp(prefix="flwr-home-"))
    env = flower_env(home, install_dependencies)
    command = [
        flwr_executable(),
        "run",
        str(project_dir),
        "--stream",
        "--federation-config",
        federation_config(num_supernodes, cpus_per_client, gpus_per_client),
    ]
    command += run_config_arguments(run_config)
    start = time.monotonic()
    lines: list[str] = []
    keep_home = False
    # Should this process be killed outright, the watcher stops the run's processes instead.
    watcher = start_parent_watch(home, env["FLWR_LOCAL_CONTROL_API_PORT"], results_path.parent)
    try:
        _start_superlink(home, env)
        _stream(command, env, timeout, echo, on_line, lines)
        status, details = _run_status(env)
        keep_home = status != "finished:completed"  # its logs say why
    except RunInterrupted as err:
        _stop_run(env, "".join(lines))
        write_interrupted(results_path.parent, f"the wrapper was {err}")
        raise
    except BaseException as err:
        keep_home = True
        if isinstance(err, FlwrRunError) and isinstance(err.__cause__, StreamTimeout):
            write_interrupted(results_path.parent, str(err), home / "local-superlink")
        raise
    finally:
        with _signals_deferred():
            stop_superlink(env["FLWR_LOCAL_CONTROL_API_PORT"])
            stop_processes(lambda: processes_of(home), grace=5.0)
            release_parent_watch(watcher)
            if not keep_home:
                shutil.rmtree(home, ignore_errors=True)
    log = "".join(lines)
    wall = time.monotonic() - start
    if status != "finished:completed":
        cause = details or last_error_line(log) or "no cause reported"
        raise FlwrRunError(f"run ended '{status}': {cause}\nFlower logs are in {home / 'local-superlink'}")
    rows = read_results(results_path) if results_path.exists() else []
    last = int(run_config.get("num-server-rounds", 0))
    # Every split reports its test loss; accuracy or perplexity only where its objective has them.
    if not rows or rows[-1].get("round") != last or "loss" not in rows[-1]:
        raise FlwrRunError(f"{results_path} lacks the test loss of round {last}")
    return FlwrRunOutcome(status, results_path, rows, wall, log)


def federation_config(num_supernodes: int, cpus_per_client: float, gpus_per_client: float) -> str:
    """Return ``flwr run``'s ``--federation-config`` words for the simulation's size and client resources."""
    if num_supernodes < 1 or cpus_per_client <= 0 or not 0 <= gpus_per_client <= 1:
        raise ValueError(
            f"need num_supernodes >= 1, cpus_per_client > 0 and 0 <= gpus_per_client <= 1, got "
            f"{num_supernodes}, {cpus_per_client}, {gpus_per_client}"
        )
    words = f"num-supernodes={num_supernodes} client-resources-num-cpus={cpus_per_client:g}"
    return words + (f" client-resources-num-gpus={gpus_per_client:g}" if gpus_per_client else "")


def last_error_line(log: str) -> str:
    """Return the last ``SomeError: message`` line of a traceback in ``log``, or an empty string.

    The fallback when Flower reports no status details: the ServerApp's traceback
    is in the streamed log, under Ray's and Flower's own error headers.
    """
    matches = re.findall(r"^(?:[\w.]+\.)?\w*(?:Error|Exception|Exceeded): .+$", log, flags=re.MULTILINE)
    return matches[-1].strip() if matches else ""


def _absolute_paths(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """Resolve relative folders against this process's working folder.

    The ServerApp runs in the SuperLink's working folder from Flower's installed
    copy of the app, so a relative path would be read from somewhere else.
    """
    resolved = dict(run_config)
    for key in ("data-dir", "output-dir"):
        if resolved.get(key):
            resolved[key] = str(Path(str(resolved[key])).expanduser().resolve())
    return resolved


def flower_env(home: Path, install_dependencies: bool) -> dict[str, str]:
    """Return the environment for `flwr` with its home in ``home`` and free local ports.

    ``install_dependencies=False`` turns off the SuperLink's per-run dependency install.
    """
    env = dict(os.environ)
    env["FLWR_HOME"] = str(home)
    env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"] = str(free_port())
    env["FLWR_LOCAL_CONTROL_API_PORT"] = str(free_port())
    # `flwr run` starts `flower-superlink` from PATH: use this environment's.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if not install_dependencies:
        env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    return env


def _start_superlink(home: Path, env: dict[str, str]) -> None:
    """Start the run's simulation SuperLink and wait for it; `flwr run` then finds it by address."""
    try:
        start_local_superlink(home, env, env["FLWR_LOCAL_SUPERLINK_HTTP_API_PORT"], env["FLWR_LOCAL_CONTROL_API_PORT"])
    except SuperLinkStartError as err:
        raise FlwrRunError(f"cannot start the local SuperLink: {err}") from err


def _stream(
    command: list[str],
    env: dict[str, str],
    timeout: float,
    echo: bool,
    on_line: Callable[[str], None] | None,
    lines: list[str],
) -> None:
    """Run ``command``, keeping its output in ``lines``; stop it and fail at ``timeout`` seconds."""
    try:
        stream_command(command, env, timeout, lines, echo=echo, on_line=on_line)
    except StreamTimeout as err:
        raise FlwrRunError(f"flwr run exceeded --timeout {timeout:g} s and was stopped") from err


def _run_status(env: dict[str, str]) -> tuple[str, str]:
    """Return the run's status and status details as `flwr ls` reports them.

    For a failed run, Flower's details hold the ServerApp's exception text
    (``Simulation failed with exception: ...``).
    """
    runs = _list_runs(env)
    if len(runs) != 1:
        raise FlwrRunError(f"expected one run on this SuperLink, found {len(runs)}")
    return str(runs[0]["status"]), str(runs[0].get("status-details") or "")


def _list_runs(env: dict[str, str], tries: int = 3) -> list[dict[str, Any]]:
    """Return `flwr ls`'s runs; a busy machine can make one call fail, so it is tried again."""
    detail = ""
    for attempt in range(1, tries + 1):
        try:
            out = subprocess.run(
                [flwr_executable(), "ls", "--format", "json"], env=env, capture_output=True, text=True, timeout=60
            )
            detail = f"{out.stdout[-500:]} {out.stderr[-500:]}"
            return list(json.loads(out.stdout)["runs"])
        except (json.JSONDecodeError, KeyError, subprocess.TimeoutExpired) as err:
            detail = detail or str(err)
        if attempt < tries:
            time.sleep(5.0 * attempt)
    raise FlwrRunError(f"cannot read `flwr ls` ({tries} tries): {detail}")


def _stop_run(env: dict[str, str], log: str) -> None:
    """Ask the SuperLink to stop the run, so Flower marks it stopped (best effort)."""
    run_ids = re.findall(r"Successfully started run (\d+)", log)
    try:
        if not run_ids:
            out = subprocess.run(
                [flwr_executable(), "ls", "--format", "json"], env=env, capture_output=True, text=True, timeout=20
            )
            runs = json.loads(out.stdout).get("runs", [])
            run_ids = [str(r["run-id"]) for r in runs if not str(r.get("status", "")).startswith("finished")]
        for run_id in run_ids:
            subprocess.run([flwr_executable(), "stop", run_id], env=env, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError, json.JSONDecodeError, KeyError, AttributeError):
        pass


class _signals_deferred:
    """Hold SIGINT and SIGTERM off while cleaning up; a second Ctrl-C must not cut it short."""

    def __enter__(self) -> None:
        self._old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}

    def __exit__(self, *_exc: object) -> None:
        for signum, handler in self._old.items():
            signal.signal(signum, handler)


def processes_of(home: Path) -> set[int]:
    """The processes of one run: those whose environment names ``home`` as FLWR_HOME, and their descendants.

    Every process `flwr run` starts (SuperLink, SuperExec, simulation, Ray)
    inherits the environment this module gives it, and ``home`` is a fresh
    temporary folder, so the marker names this run's processes and no others,
    even those whose parent exited.
    """
    pids = descendants(processes_with_environment(f"FLWR_HOME={home}"))
    pids.discard(os.getpid())
    return {p for p in pids if alive(p)}


def stop_superlink(control_port: str) -> None:
    """Stop the SuperLink that `flwr run` started on ``control_port``, with its children."""
    marker = f"127.0.0.1:{control_port}"

    def is_that_superlink(words: list[str]) -> bool:
        return any(w.endswith("flower-superlink") for w in words) and marker in words

    for pid in processes_running(is_that_superlink):
        stop_process_group(pid)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: one FSL-SAGE run, checked; prints where results are."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-supernodes", type=int, default=10, help="simulated SuperNodes (clients)")
    parser.add_argument("--cpus-per-client", type=float, default=1.0, help="Ray CPUs per ClientApp")
    parser.add_argument(
        "--gpus-per-client", type=float, default=0.0, help="Ray GPUs per ClientApp (0.25: four clients share one GPU)"
    )
    parser.add_argument("--output-dir", default="outputs", help="results folder (the run config's output-dir)")
    parser.add_argument("--run-name", default="", help="results subfolder (the run config's run-name)")
    parser.add_argument(
        "--run-config",
        default="",
        help="extra run-config overrides (the repository's apps run; own code goes on PYTHONPATH)",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before the run is stopped and fails")
    args = parser.parse_args(argv)

    overrides = parse_run_config(args.run_config)
    overrides.setdefault("min-available-nodes", args.num_supernodes)
    overrides["output-dir"] = str(Path(args.output_dir).resolve())
    overrides["run-name"] = (
        args.run_name or f"{time.strftime('%Y%m%d-%H%M%S')}-{overrides.get('algorithm', 'fsl-sage')}"
    )
    overrides.setdefault("num-server-rounds", _default_rounds())
    # Processes whose parents exit are handed to this process, not to init, so
    # the whole tree stays findable (they also carry FLWR_HOME in their environment).
    become_subreaper()
    previous = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        outcome = run_app(
            overrides,
            num_supernodes=args.num_supernodes,
            cpus_per_client=args.cpus_per_client,
            gpus_per_client=args.gpus_per_client,
            timeout=args.timeout,
        )
    except FlwrRunError as err:
        print(f"FAILED: {err}", file=sys.stderr)
        return 1
    except RunInterrupted as err:
        print(f"STOPPED: {err}; the run was stopped and its processes ended", file=sys.stderr)
        return 128 + err.signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    last = outcome.rows[-1]
    print(
        f"\nrun {outcome.status} in {outcome.wall_seconds:.0f} s: round {last['round']} "
        f"test {_test_figures(last)}, {last['cumulative_bytes'] / MIB:.1f} MiB sent\n"
        f"results: {outcome.results_path}"
    )
    return 0


def _test_figures(row: dict) -> str:
    """``accuracy 0.9123`` for a classifier, ``loss 3.2807, perplexity 26.59`` for a language model."""
    if "accuracy" in row:
        return f"accuracy {row['accuracy']:.4f}"
    figures = f"loss {row['loss']:.4f}"
    return figures + (f", perplexity {row['perplexity']:.2f}" if "perplexity" in row else "")


def _default_rounds() -> int:
    config = tomllib.loads((PROJECT_DIR / "pyproject.toml").read_text())
    return int(config["tool"]["flwr"]["app"]["config"]["num-server-rounds"])


if __name__ == "__main__":
    sys.exit(main())
