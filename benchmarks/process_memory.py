"""Peak resident memory and CPU time of a simulation's processes while it runs: the ServerApp's and the clients'."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from simulations.processes import descendants, process_table

MIB = 1024 * 1024


def peak_rss_bytes(pid: int) -> int:
    """Return a process's peak resident set size (``VmHWM``), 0 when it has ended or is unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def cpu_seconds(pid: int) -> float:
    """Return the CPU seconds (user and system) a process has used so far, 0 when it has ended or is unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def role_of(words: list[str]) -> str:
    """Say which part of a Flower simulation a command line is: ``server``, ``client`` or ``other``.

    Under ``flwr run`` the ServerApp runs inside the ``flwr-simulation`` process (it
    also drives Ray); Ray names each ClientApp worker ``ray::ClientAppActor...``
    in its process title.
    """
    if not words:
        return "other"
    if any(Path(w).name == "flwr-simulation" for w in words[:2]):
        return "server"
    return "client" if words[0].startswith("ray::ClientAppActor") else "other"


@dataclass
class MemorySampler:
    """Sample the peak memory and CPU time of this process's descendants every ``interval`` seconds in a thread.

    Every process below ``root`` is read, so the run must stay in this process's
    tree (a sub-reaper keeps detached SuperLinks there). ``VmHWM`` is the kernel's
    own peak of each process, so a spike between two samples is not missed, only a
    process that starts and ends between two samples. CPU seconds are each
    process's last reading, summed per role: unlike wall time, they hardly change
    with the machine's load.
    """

    interval: float = 1.0
    root: int = field(default_factory=os.getpid)
    server_peak: int = 0
    client_peak: int = 0
    clients_seen: set[int] = field(default_factory=set)
    cpu_by_pid: dict[int, tuple[str, float]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ValueError(f"interval must be > 0 seconds, got {self.interval}")

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()

    def sample(self) -> None:
        """Read every descendant's peak once and keep the largest per role."""
        table = process_table()
        for pid in descendants({self.root}, table) - {self.root}:
            role = role_of(table[pid][1])
            if role != "other":
                used = cpu_seconds(pid)
                self.cpu_by_pid[pid] = (role, max(used, self.cpu_by_pid.get(pid, (role, 0.0))[1]))
            if role == "server":
                self.server_peak = max(self.server_peak, peak_rss_bytes(pid))
            elif role == "client":
                self.clients_seen.add(pid)
                self.client_peak = max(self.client_peak, peak_rss_bytes(pid))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def figures(self) -> dict[str, float | int]:
        """The peaks in MiB, the CPU seconds per role and the number of client actor processes seen."""
        return {
            "server_app_peak_rss_mib": self.server_peak / MIB,
            "client_actor_peak_rss_mib": self.client_peak / MIB,
            "client_actor_processes": len(self.clients_seen),
            "server_app_cpu_seconds": sum(s for r, s in self.cpu_by_pid.values() if r == "server"),
            "client_actor_cpu_seconds": sum(s for r, s in self.cpu_by_pid.values() if r == "client"),
        }
