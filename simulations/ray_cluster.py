"""A Ray cluster of several nodes on 127.0.0.1, started with the `ray` CLI and stopped by process id.

Flower's simulation runtime connects to an existing Ray cluster when the
environment names it in ``RAY_ADDRESS`` (a bare ``ray.init()`` reads it). This
starts such a cluster on one machine, as ``ray start --head`` and
``ray start --address`` would on several: each node with its own CPUs, temporary
folder and ports, so it neither joins nor disturbs any other Ray instance here.

Every process of the cluster carries a marker in its environment
(``FSL_SAGE_RAY_CLUSTER=<its temporary folder>``), which Ray passes on to the workers its
raylets start; stopping finds the cluster's processes by that marker, and their
descendants, and ends them by id (SIGTERM, then SIGKILL), where ``ray stop`` would
end every Ray instance of this user.

Usage::

    with LocalRayCluster(workdir, cpus_per_node=(1, 1)) as cluster:
        os.environ["RAY_ADDRESS"] = cluster.address
        ...
        cluster.actor_nodes("ClientAppActor")  # node index per actor started
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from simulations.flower_cli import LOOPBACK, free_port
from simulations.processes import alive, descendants, processes_with_environment, stop_processes

#: Environment entry that names the processes of one cluster.
MARKER_NAME = "FSL_SAGE_RAY_CLUSTER"


class RayClusterError(RuntimeError):
    """A node of the cluster did not start."""


class LocalRayCluster:
    """A head node and worker nodes on 127.0.0.1, each with its own resources.

    Parameters
    ----------
    workdir : Path
        Holds the output of each ``ray start``. Ray's temporary folders (one per
        node) go under a short folder in the system's temporary folder instead, as
        Ray's socket paths there must stay under 108 bytes; it is removed on stop.
    cpus_per_node : Sequence[int]
        CPUs each node offers to Ray, head first; one entry per node.
    start_timeout : float
        Seconds one ``ray start`` may take.
    stop_timeout : float
        Seconds between SIGTERM and SIGKILL when stopping.
    """

    def __init__(
        self,
        workdir: Path,
        cpus_per_node: Sequence[int] = (1, 1),
        *,
        start_timeout: float = 180.0,
        stop_timeout: float = 10.0,
    ) -> None:
        if not cpus_per_node:
            raise ValueError("cpus_per_node must name at least the head node")
        if any(int(c) < 1 for c in cpus_per_node):
            raise ValueError(f"cpus_per_node must be positive, got {list(cpus_per_node)}")
        self.workdir = Path(workdir).resolve()
        self.cpus_per_node = [int(c) for c in cpus_per_node]
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.port = 0
        self.ray_root: Path | None = None
        #: Every process id stopped so far.
        self.stopped_pids: set[int] = set()

    @property
    def address(self) -> str:
        """The head's GCS address, for ``RAY_ADDRESS`` or ``ray start --address``."""
        return f"{LOOPBACK}:{self.port}"

    def node_dir(self, index: int) -> Path:
        """Ray's temporary folder of node ``index`` (0 is the head)."""
        if self.ray_root is None:
            raise RayClusterError("the cluster has not been started")
        return self.ray_root / f"n{index}"

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> LocalRayCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the head, then each worker node pointed at it."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ray_root = Path(tempfile.mkdtemp(prefix="ray-"))
        self.port = free_port()
        head = ["--head", "--port", str(self.port), "--include-dashboard", "false"]
        self._ray_start(0, head)
        for index in range(1, len(self.cpus_per_node)):
            self._ray_start(index, ["--address", self.address])

    def stop(self) -> None:
        """End every process of this cluster, by id, and remove Ray's temporary folders.

        Call :meth:`actor_nodes` before: it reads those folders.
        """
        self.stopped_pids |= stop_processes(self.processes, grace=self.stop_timeout)
        if self.ray_root is not None:
            shutil.rmtree(self.ray_root, ignore_errors=True)

    def processes(self) -> set[int]:
        """The running processes of this cluster: those carrying its marker, and their descendants."""
        if self.ray_root is None:
            return set()
        found = descendants(processes_with_environment(f"{MARKER_NAME}={self.ray_root}"))
        found.discard(os.getpid())
        return {p for p in found if alive(p)}

    # ------------------------------------------------------------------ placement

    def actor_nodes(self, class_name: str) -> list[int]:
        """Return, for each actor of ``class_name`` started so far, the index of the node that ran it.

        Ray writes one output file per worker into the logs of the node whose raylet
        started it, and a worker that becomes an actor writes ``:actor_name:<class>``
        as a line of that file; the node folder that holds it is where the actor ran.
        """
        marker = f":actor_name:{class_name}"
        placed = []
        for index in range(len(self.cpus_per_node)):
            for out in sorted(self.node_dir(index).glob("session_*/logs/worker-*.out")):
                lines = out.read_text(errors="replace").splitlines()
                placed += [index] * sum(line.strip() == marker for line in lines)
        return placed

    # ------------------------------------------------------------------ helpers

    def _ray_start(self, index: int, role: list[str]) -> None:
        folder = self.node_dir(index)
        folder.mkdir(parents=True, exist_ok=True)
        command = [str(Path(sys.executable).parent / "ray"), "start", *role]
        command += ["--node-ip-address", LOOPBACK, "--num-cpus", str(self.cpus_per_node[index]), "--num-gpus", "0"]
        command += ["--temp-dir", str(folder), "--disable-usage-stats"]
        # The other ports Ray picks free by itself; the head's client server would take 10001.
        if index == 0:
            command += ["--ray-client-server-port", str(free_port())]
        env = dict(os.environ)
        env[MARKER_NAME] = str(self.ray_root)
        env.pop("RAY_ADDRESS", None)
        log_path = self.workdir / f"ray-start-{index}.log"
        with open(log_path, "w") as log:
            try:
                done = subprocess.run(
                    command, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=self.start_timeout, check=False
                )
            except subprocess.TimeoutExpired as err:
                raise RayClusterError(f"ray start of node {index} exceeded {self.start_timeout:.0f} s") from err
        if done.returncode != 0:
            output = log_path.read_text(errors="replace")
            raise RayClusterError(f"ray start of node {index} exited {done.returncode}:\n{output[-3000:]}")
