"""Find, signal and reap the processes a runner started, by process id, from Linux's ``/proc``."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path

#: ``prctl`` option that makes this process adopt its orphaned descendants (Linux).
_PR_SET_CHILD_SUBREAPER = 36
#: ``prctl`` option that sends this process a signal when its parent ends (Linux).
_PR_SET_PDEATHSIG = 1

#: One row of :func:`process_table`: the parent's process id and the command-line words.
ProcessRow = tuple[int, list[str]]


def alive(pid: int) -> bool:
    """Return whether ``pid`` runs (a zombie does not).

    Parameters
    ----------
    pid : int
        The process id.

    Returns
    -------
    bool
        ``True`` while the process exists and has not exited.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The command name in field 2 may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    return bool(fields) and fields[0] not in ("Z", "X")


def send_signal(pid: int, signum: int) -> None:
    """Send ``signum`` to ``pid``; a process that is gone or not ours is skipped.

    Parameters
    ----------
    pid : int
        The process id.
    signum : int
        The signal, e.g. ``signal.SIGTERM``.
    """
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def reap_children(pids: Iterable[int]) -> None:
    """Collect those of ``pids`` that are exited children of this process (adopted ones included).

    Parameters
    ----------
    pids : Iterable[int]
        Candidate process ids; those that are not children of this process are skipped.
    """
    for pid in pids:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            continue


def become_subreaper() -> None:
    """Adopt orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``); a no-op elsewhere.

    Processes whose parents exit are then handed to this process, not to init, so a
    whole tree stays findable from here and its exited members can be reaped.
    """
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def die_with_parent(signum: int = signal.SIGKILL) -> None:
    """Have the kernel send ``signum`` to this process when its parent ends (Linux); a no-op elsewhere.

    Meant as ``preexec_fn`` of :class:`subprocess.Popen`: the child then does not
    outlive a parent that was killed without the chance to stop it. The parent
    here is the thread that started the child, so start children from a thread
    that lives as long as they should.

    Parameters
    ----------
    signum : int
        The signal the child gets; SIGKILL by default.
    """
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    except (OSError, AttributeError):
        return
    # The parent may have ended before the call: then no signal would ever come.
    if os.getppid() != parent:
        os.kill(os.getpid(), signum)


def process_table() -> dict[int, ProcessRow]:
    """Return every readable process: pid -> (parent pid, command-line words).

    Returns
    -------
    dict[int, ProcessRow]
        Processes that end while the table is read are left out.
    """
    table: dict[int, ProcessRow] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = [w.decode(errors="replace") for w in (entry / "cmdline").read_bytes().split(b"\0") if w]
            stat = (entry / "stat").read_text()
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table[int(entry.name)] = (parent, words)
    return table


def descendants(roots: Iterable[int], table: dict[int, ProcessRow] | None = None) -> set[int]:
    """Return ``roots`` and every process below them in the process tree.

    Parameters
    ----------
    roots : Iterable[int]
        Process ids to start from.
    table : dict[int, ProcessRow], optional
        A :func:`process_table` already read; read now when omitted.

    Returns
    -------
    set[int]
        The roots and their children, grandchildren and so on.
    """
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found: set[int] = set()
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid not in found:
            found.add(pid)
            stack.extend(children.get(pid, ()))
    return found


def processes_with_environment(entry: str) -> set[int]:
    """Return the processes, other than this one, whose environment holds ``entry`` (``NAME=value``).

    Parameters
    ----------
    entry : str
        One exact environment entry, e.g. ``FLWR_HOME=/tmp/flwr-home-x``.

    Returns
    -------
    set[int]
        Their process ids; processes whose environment cannot be read are left out.
    """
    marker = entry.encode()
    found: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                found.add(int(proc.name))
        except OSError:
            continue
    return found


def spawned_by(roots: set[int], table: dict[int, ProcessRow]) -> set[int]:
    """Return the processes whose command line names one of ``roots`` as ``--parent-pid``.

    Flower's SuperLink and SuperNode start SuperExec processes that detach from them;
    this flag is what still ties those to the process that started them.

    Parameters
    ----------
    roots : set[int]
        The parent process ids.
    table : dict[int, ProcessRow]
        A :func:`process_table`.

    Returns
    -------
    set[int]
        The detached processes found.
    """
    found = set()
    for pid, (_, words) in table.items():
        for flag, value in zip(words[:-1], words[1:]):
            if flag == "--parent-pid" and value.isdigit() and int(value) in roots:
                found.add(pid)
    return found


def stop_processes(
    find: Callable[[], set[int]],
    *,
    grace: float,
    reap: Callable[[set[int]], None] = reap_children,
) -> set[int]:
    """SIGTERM what ``find`` returns, SIGKILL what is still running after ``grace`` seconds.

    ``find`` is asked again while waiting and before the SIGKILL, so processes started
    meanwhile are stopped too. ``reap`` collects exited children, so they do not linger
    as zombies (which :func:`alive` counts as ended).

    Parameters
    ----------
    find : Callable[[], set[int]]
        Returns the process ids to stop, as they are now.
    grace : float
        Seconds to wait after SIGTERM, and again after SIGKILL.
    reap : Callable[[set[int]], None]
        Collects exited children among the given ids; :func:`reap_children` by default.

    Returns
    -------
    set[int]
        Every process id that was signalled.
    """
    pids = find()
    for pid in pids:
        send_signal(pid, signal.SIGTERM)
    _wait_until_ended(pids, grace, reap, find)
    pids |= find()
    for pid in pids:
        if alive(pid):
            send_signal(pid, signal.SIGKILL)
    _wait_until_ended(pids, grace, reap)
    reap(pids)
    return pids


def _wait_until_ended(
    pids: set[int],
    timeout: float,
    reap: Callable[[set[int]], None],
    find: Callable[[], set[int]] | None = None,
) -> None:
    """Wait up to ``timeout`` seconds for ``pids`` to end, adding what ``find`` turns up."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        reap(pids)
        time.sleep(0.1)
        if find is not None:
            pids |= find()


def stop_process_group(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM the process group of ``pid``; SIGKILL it if ``pid`` still runs after ``timeout`` seconds.

    Parameters
    ----------
    pid : int
        A member of the group (its leader, typically).
    timeout : float
        Seconds to wait for ``pid`` to end after SIGTERM.
    """
    try:
        group = os.getpgid(pid)
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(group, signal.SIGKILL)
    except ProcessLookupError:
        pass


def processes_running(predicate: Callable[[list[str]], bool]) -> set[int]:
    """Return the processes whose command-line words satisfy ``predicate``.

    Parameters
    ----------
    predicate : Callable[[list[str]], bool]
        Called with each process's command-line words.

    Returns
    -------
    set[int]
        Their process ids.
    """
    return {pid for pid, (_, words) in process_table().items() if predicate(words)}
