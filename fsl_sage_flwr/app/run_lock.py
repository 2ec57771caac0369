"""The lock that lets one process at a time write into a run folder."""

from __future__ import annotations

import json
import os
import socket
from logging import WARNING
from pathlib import Path
from types import TracebackType

from flwr.common.logger import log

LOCK_FILE = "run.lock"


class RunLockedError(RuntimeError):
    """The run folder is held by another live process."""


class RunLock:
    """An exclusive ``run.lock`` in a run folder, holding the owner's pid and host.

    Taken with ``O_CREAT | O_EXCL``, so of two processes racing for the folder
    exactly one creates the file. A lock left by a process that no longer runs
    on this host (killed with SIGKILL, say) is stale: it is taken over with a
    log line. A lock held from another host is never taken over, since its pid
    cannot be checked from here. Use it as a context manager: the lock is
    removed on any exit of the ``with`` block.

    Parameters
    ----------
    folder : Path
        The run folder; it must exist.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self._held = False

    def acquire(self) -> None:
        """Take the lock, or raise :class:`RunLockedError` naming the live holder."""
        for _ in range(2):  # a second try after removing a stale lock
            if self._try_create():
                self._held = True
                return
            holder = _read_holder(self.path)
            if holder is None or not _is_stale(holder):
                pid, host = holder or ("?", "?")
                raise RunLockedError(
                    f"{self.path} is held by pid {pid} on {host}; another run writes into this folder. "
                    "Wait for it to end, or remove the lock file if that process is gone"
                )
            log(WARNING, "%s was left by pid %s, which no longer runs; taking it over", self.path, holder[0])
            self.path.unlink(missing_ok=True)
        raise RunLockedError(f"{self.path} was taken by another process while its stale lock was removed")

    def release(self) -> None:
        """Remove the lock if this object holds it."""
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.release()

    def _try_create(self) -> bool:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(self.path, flags, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"pid": os.getpid(), "host": socket.gethostname()}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        return True


def _read_holder(path: Path) -> tuple[int, str] | None:
    """The (pid, host) a lock file names; ``None`` when it is unreadable or half written."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return int(data["pid"]), str(data["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _is_stale(holder: tuple[int, str]) -> bool:
    """Whether the holder is a process of this host that no longer runs."""
    pid, host = holder
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False
