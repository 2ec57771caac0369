"""A real Flower federation on loopback: one SuperLink, N SuperNodes, `flwr run`.

Unlike ``simulations.flwr_run`` (Flower's simulation runtime), this starts the
Deployment Engine processes themselves, as they run on separate machines:
``flower-superlink`` and one ``flower-supernode`` per node, all on 127.0.0.1 with
free ports, insecure or with TLS. The ``flwr`` CLI reaches the SuperLink through a
named connection in a fresh ``$FLWR_HOME/config.toml``.

Every process it starts is stopped by its process id when the federation closes,
together with the SuperExec processes the SuperLink and SuperNodes spawn (those
detach; they are found by the ``--parent-pid`` in their command lines) and their
descendants. SIGTERM first, SIGKILL after ``stop_timeout`` seconds.

Usage::

    with LoopbackFederation(workdir, [{"partition-id": 0, "num-partitions": 2}, ...]) as fed:
        outcome = fed.run({"num-server-rounds": 3, "output-dir": "/abs/path", "run-name": "x"})
        assert outcome.status == "finished:completed"
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulations.flower_cli import LOOPBACK, free_port, run_config_arguments, toml_value, venv_bin
from simulations.paths import PROJECT_DIR
from simulations.processes import alive, descendants, process_table, spawned_by, stop_processes
from simulations.tls import TlsFiles, make_tls_files

#: What ``flwr`` prints when its request to the SuperLink failed or timed out.
_UNAVAILABLE = "Connection to the SuperLink is unavailable"
#: What ``flower-superlink`` logs for each SuperNode it activates.
_ACTIVATED = "[Fleet.ActivateNode] Activated node_id="


class DeploymentError(RuntimeError):
    """The federation did not start, or a run did not end in time."""


@dataclass(frozen=True)
class DeploymentRun:
    """How one `flwr run` on the federation ended."""

    run_id: int
    status: str
    log: str
    wall_seconds: float


class LoopbackFederation:
    """One SuperLink and one SuperNode per node config, on 127.0.0.1.

    Parameters
    ----------
    workdir : Path
        Holds the Flower home folders, certificates, the SuperLink database and the
        processes' logs (``logs/``).
    node_configs : Sequence[Mapping[str, Any]]
        One ``--node-config`` per SuperNode (e.g. ``{"partition-id": 0, "num-partitions": 3}``).
    tls : bool
        Serve the SuperLink with a certificate from a CA made here; otherwise insecure.
    install_dependencies : bool
        Leave the SuperLink's per-run ``uv sync`` of the app's dependencies on. Off by
        default (``--disable-runtime-dependency-installation``); see the README.
    name : str
        Name of the connection entry in ``$FLWR_HOME/config.toml``.
    stop_timeout : float
        Seconds between SIGTERM and SIGKILL when stopping.
    cli_timeout : float
        Seconds one ``flwr`` CLI command may take; many SuperNodes starting at once
        on few cores slow the first ones down. Also bounds the wait for a batch of
        SuperNodes (``start_batch``) when longer than ``start``'s ``ready_timeout``.
    start_batch : int
        SuperNodes started at once; the next ones start when the SuperLink has
        activated these. 0 starts all together. A SuperNode whose activation the
        SuperLink answered too late is refused when it asks again (Flower 1.42), so
        batches keep a slow machine from stranding nodes.
    """

    def __init__(
        self,
        workdir: Path,
        node_configs: Sequence[Mapping[str, Any]],
        *,
        tls: bool = False,
        install_dependencies: bool = False,
        name: str = "loopback",
        stop_timeout: float = 10.0,
        cli_timeout: float = 60.0,
        start_batch: int = 0,
    ) -> None:
        if start_batch < 0:
            raise ValueError(f"start_batch must be 0 (all at once) or positive, got {start_batch}")
        self.workdir = Path(workdir).resolve()
        self.node_configs = [dict(c) for c in node_configs]
        self.tls = tls
        self.install_dependencies = install_dependencies
        self.name = name
        self.stop_timeout = stop_timeout
        self.cli_timeout = cli_timeout
        self.start_batch = start_batch
        self.flwr_home = self.workdir / "flwr-home"
        self.log_dir = self.workdir / "logs"
        self.port = 0
        self.tls_files: TlsFiles | None = None
        self.processes: list[subprocess.Popen] = []
        #: Every process id this federation stopped (started ones and their SuperExecs).
        self.stopped_pids: set[int] = set()
        self._log_handles: list[Any] = []

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LoopbackFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, ready_timeout: float = 60.0) -> None:
        """Start the SuperLink, wait for its port, start the SuperNodes, write the connection."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self.tls_files = make_tls_files(self.workdir / "certificates")
        self.port = free_port()
        self._spawn("superlink", self.superlink_command(), self.workdir / "superlink-home")
        self._wait_for_port(self.port, ready_timeout)
        batch = self.start_batch or len(self.node_configs)
        for i, config in enumerate(self.node_configs):
            self._spawn(f"supernode-{i}", self.supernode_command(config), self.workdir / f"supernode-{i}-home")
            if (i + 1) % batch == 0 and i + 1 < len(self.node_configs):
                self._wait_for_activations(i + 1, max(ready_timeout, self.cli_timeout))
        self.write_connection()

    def superlink_command(self) -> list[str]:
        """The ``flower-superlink`` command line."""
        command = [venv_bin("flower-superlink"), *self._superlink_security()]
        command += ["--host", LOOPBACK, "--port", str(self.port)]
        command += ["--database", str(self.workdir / "superlink.db")]
        if not self.install_dependencies:
            command.append("--disable-runtime-dependency-installation")
        return command

    def supernode_command(self, node_config: Mapping[str, Any]) -> list[str]:
        """The ``flower-supernode`` command line for one node."""
        if self.tls_files is not None:
            security = ["--root-certificates", str(self.tls_files.ca_certificate)]
        else:
            security = ["--insecure"]
        node = " ".join(f"{k}={toml_value(v)}" for k, v in node_config.items())
        return [
            venv_bin("flower-supernode"),
            *security,
            "--superlink",
            f"{LOOPBACK}:{self.port}",
            "--port",
            str(free_port()),
            "--node-config",
            node,
        ]

    def write_connection(self) -> Path:
        """Write ``[superlink.<name>]`` into ``$FLWR_HOME/config.toml``."""
        lines = ["[superlink]", f'default = "{self.name}"', "", f"[superlink.{self.name}]"]
        lines.append(f'address = "{LOOPBACK}:{self.port}"')
        if self.tls_files is not None:
            lines.append(f"root-certificates = {json.dumps(str(self.tls_files.ca_certificate))}")
        else:
            lines.append("insecure = true")
        path = self.flwr_home / "config.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def _superlink_security(self) -> list[str]:
        if self.tls_files is None:
            return ["--insecure"]
        return [
            "--ssl-ca-certfile",
            str(self.tls_files.ca_certificate),
            "--ssl-certfile",
            str(self.tls_files.server_certificate),
            "--ssl-keyfile",
            str(self.tls_files.server_key),
        ]

    # ------------------------------------------------------------------ running

    def env(self, home: Path | None = None) -> dict[str, str]:
        """Environment for Flower processes: this venv's bin first on PATH, a Flower home."""
        env = dict(os.environ)
        env["FLWR_HOME"] = str(home or self.flwr_home)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.pop("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", None)
        return env

    def flwr(self, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
        """Run a ``flwr`` CLI command against this federation's Flower home (``cli_timeout`` by default)."""
        return subprocess.run(
            [venv_bin("flwr"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=self.cli_timeout if timeout is None else timeout,
        )

    def list_runs(self) -> list[dict[str, Any]]:
        """``flwr ls <name> --format json``: the runs on the SuperLink."""
        out = self.flwr("ls", self.name, "--format", "json")
        try:
            return list(json.loads(out.stdout)["runs"])
        except (json.JSONDecodeError, KeyError) as err:
            raise DeploymentError(f"cannot read `flwr ls`: {out.stdout[-800:]} {out.stderr[-800:]}") from err

    def run(
        self,
        run_config: Mapping[str, Any],
        *,
        app_dir: Path = PROJECT_DIR,
        timeout: float = 600.0,
        poll_interval: float = 1.0,
    ) -> DeploymentRun:
        """``flwr run <app_dir> <name> --stream --run-config ...``, then wait for the run to finish.

        Returns when ``flwr ls`` shows the run ``finished:*`` (``--stream`` alone exits 0
        even for a failed run).

        Raises
        ------
        DeploymentError
            If the run was not submitted or did not finish within ``timeout`` seconds.
        """
        start = time.monotonic()
        before = {int(r["run-id"]) for r in self.list_runs()}
        command = [venv_bin("flwr"), "run", str(app_dir), self.name, "--stream"]
        command += run_config_arguments(run_config)
        log_path = self.log_dir / f"flwr-run-{len(before)}.log"
        while True:
            returncode, log = self._submit(command, log_path, start + timeout - time.monotonic())
            # A SuperLink busy with many SuperNodes connecting may answer the CLI too late;
            # submit again only when no run arrived and the CLI said it could not connect.
            unanswered = returncode != 0 and _UNAVAILABLE in log and not self._new_runs(before)
            if not unanswered or time.monotonic() - start > timeout:
                break
            time.sleep(5 * poll_interval)
        while True:
            new = self._new_runs(before)
            if new and str(new[0]["status"]).startswith("finished"):
                return DeploymentRun(int(new[0]["run-id"]), str(new[0]["status"]), log, time.monotonic() - start)
            if not new and returncode != 0:
                raise DeploymentError(f"flwr run exited {returncode} without submitting a run; log:\n{log[-3000:]}")
            if time.monotonic() - start > timeout:
                state = new[0]["status"] if new else "not submitted"
                raise DeploymentError(f"run {state} after {timeout:.0f} s; log:\n{log[-3000:]}")
            time.sleep(poll_interval)

    def _new_runs(self, before: set[int]) -> list[dict[str, Any]]:
        return [r for r in self.list_runs() if int(r["run-id"]) not in before]

    def _submit(self, command: list[str], log_path: Path, timeout: float) -> tuple[int, str]:
        """Run ``flwr run`` for at most ``timeout`` seconds (then kill it); return its exit code and output."""
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(command, env=self.env(), stdout=log_file, stderr=subprocess.STDOUT)
            try:
                proc.wait(timeout=max(timeout, 1.0))
            except subprocess.TimeoutExpired:
                pass
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        return proc.returncode, log_path.read_text(errors="replace")

    # ------------------------------------------------------------------ stopping

    def stop(self) -> None:
        """Stop every started process and the SuperExecs they spawned, by process id."""
        self.stopped_pids |= stop_processes(self._process_tree, grace=self.stop_timeout, reap=self._reap_started)
        for proc in self.processes:
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                pass
        for handle in self._log_handles:
            handle.close()
        self._log_handles.clear()

    def alive_pids(self) -> list[int]:
        """Process ids this federation started or stopped that are still running."""
        return sorted(p for p in self.stopped_pids | {p.pid for p in self.processes} if alive(p))

    def _process_tree(self) -> set[int]:
        """Started processes, the SuperExecs naming them as ``--parent-pid``, and all descendants."""
        roots = {p.pid for p in self.processes if alive(p.pid)}
        table = process_table()
        return descendants(roots | spawned_by(roots, table), table)

    def _reap_started(self, _pids: set[int]) -> None:
        """Collect the started processes that exited, so they do not linger as zombies."""
        for proc in self.processes:
            proc.poll()

    def _spawn(self, label: str, command: list[str], home: Path) -> None:
        home.mkdir(parents=True, exist_ok=True)
        handle = open(self.log_dir / f"{label}.log", "w")
        self._log_handles.append(handle)
        handle.write(" ".join(command) + "\n")
        handle.flush()
        self.processes.append(
            subprocess.Popen(command, env=self.env(home), cwd=home, stdout=handle, stderr=subprocess.STDOUT)
        )

    def _wait_for_activations(self, count: int, timeout: float) -> None:
        """Wait until the SuperLink's log shows ``count`` SuperNodes activated."""
        log = self.log_dir / "superlink.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if log.read_text(errors="replace").count(_ACTIVATED) >= count:
                return
            time.sleep(0.5)
        raise DeploymentError(f"the SuperLink did not activate {count} SuperNodes within {timeout:.0f} s")

    def _wait_for_port(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.processes[0].poll() is not None:
                log = (self.log_dir / "superlink.log").read_text(errors="replace")
                raise DeploymentError(f"flower-superlink exited with {self.processes[0].returncode}:\n{log[-3000:]}")
            with socket.socket() as sock:
                sock.settimeout(0.5)
                if sock.connect_ex((LOOPBACK, port)) == 0:
                    return
            time.sleep(0.2)
        raise DeploymentError(f"flower-superlink did not listen on port {port} within {timeout:.0f} s")
