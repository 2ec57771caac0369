"""Checkpoints of the server's whole state, and the disk-backed store of per-client state.

Everything is written with ``torch.save`` as plain tensors, dicts, lists and
numbers, and read back with ``weights_only=True``: a checkpoint cannot run code
when it is loaded. Every file is written atomically (a temporary file in the
same folder, fsync, ``os.replace``), so a server killed at any moment leaves
either the previous file or the new one, never a torn one. Beside each file
goes ``<name>.sha256``, the SHA-256 of its bytes, written after it and checked
before a byte is unpickled: ``torch.load`` does not check the zip's CRC, so a
flipped byte would otherwise load as other weights.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from fsl_sage_flwr.core.buffer import SmashedBuffer
from fsl_sage_flwr.core.memory import optimizer_nbytes, state_nbytes

CHECKPOINT_FILE = "checkpoint.pt"
HASH_SUFFIX = ".sha256"
#: 2: the server state holds the reply guards (activation scale, identities); 1 did not
FORMAT_VERSION = 2


class DamagedFileError(ValueError):
    """A saved file whose bytes do not match its SHA-256, or that has none."""


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically, then its SHA-256 to ``<path>.sha256``."""
    path = Path(path)
    digest = _atomic_write(path, lambda handle: torch.save(obj, handle))
    _atomic_write(hash_path(path), lambda handle: handle.write(f"{digest}  {path.name}\n".encode()))


def safe_load(path: Path) -> Any:
    """Load a file written by :func:`atomic_save`, tensors and plain containers only.

    Raises
    ------
    DamagedFileError
        When the file's bytes do not match its SHA-256, or its hash file is missing.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        expected = hash_path(path).read_text(encoding="ascii").split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        raise DamagedFileError(f"{path} has no readable {hash_path(path).name}; it cannot be trusted") from None
    if hashlib.sha256(data).hexdigest() != expected:
        raise DamagedFileError(f"{path} does not match its SHA-256; the file is damaged or was changed")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def hash_path(path: Path) -> Path:
    """Where the SHA-256 of a file written by :func:`atomic_save` goes."""
    return path.with_name(path.name + HASH_SUFFIX)


def remove_saved(path: Path) -> None:
    """Delete a file written by :func:`atomic_save` and its hash, if present."""
    path.unlink(missing_ok=True)
    hash_path(path).unlink(missing_ok=True)


def _atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> str:
    """Write ``path`` through a temporary file, fsync, replace; return the SHA-256 of its bytes."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # A process killed mid-write may leave this name behind, and a restart may reuse its pid.
    tmp.unlink(missing_ok=True)
    try:
        # O_EXCL | O_NOFOLLOW: never write through a link planted at the temporary name.
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "w+b") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            handle.seek(0)
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        # os.replace swaps a link at ``path`` for the file: the link's target is never written.
        os.replace(tmp, path)
    finally:
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
    _fsync_dir(path.parent)
    return digest


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def rng_state() -> dict[str, Any]:
    """The global random states the server draws from: Python's ``random`` and torch's."""
    version, internal, gauss = random.getstate()
    return {"python": [version, list(internal), gauss], "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(state["torch"])


# ------------------------------------------------------------ per-client state
@dataclass
class ClientState:
    """The heavy part of what the FSL-SAGE server keeps per client."""

    aux: nn.Module
    aux_optimizer: torch.optim.Optimizer
    buffer: SmashedBuffer

    def to_dict(self) -> dict[str, Any]:
        """Plain tensors and dicts, as written to disk and into checkpoints."""
        return {
            "aux": self.aux.state_dict(),
            "aux_optimizer": self.aux_optimizer.state_dict(),
            "buffer": self.buffer.state_dict(),
        }

    def load_dict(self, state: dict[str, Any]) -> None:
        """Load what :meth:`to_dict` returned."""
        self.aux.load_state_dict(state["aux"])
        self.aux_optimizer.load_state_dict(state["aux_optimizer"])
        self.buffer.load_state_dict(state["buffer"])

    def nbytes(self) -> int:
        """Bytes of the aux model, its optimizer state and the buffer."""
        return state_nbytes(self.aux) + optimizer_nbytes(self.aux_optimizer) + self.buffer.nbytes()


class ClientStore:
    """Per-client state keyed by partition id, on disk, with a bounded LRU cache in memory.

    Without a folder everything stays in memory (and a checkpoint embeds it).
    With one, at most ``max_cached`` clients are held in memory; the least
    recently used one is written to ``<folder>/<partition>.<generation>.pt``
    when it leaves the cache, if it changed. Each checkpoint starts a new
    generation, so files written after a checkpoint never overwrite the files
    it names: :meth:`commit` (once the checkpoint file is in place) deletes the
    versions it superseded, and :meth:`load_state_dict` deletes versions newer than the
    checkpoint's.

    Parameters
    ----------
    factory : Callable[[int], ClientState]
        Builds a fresh state for a partition; loaded states are written into one.
    folder : Path, optional
        Where client files go; ``None`` keeps everything in memory.
    max_cached : int
        Clients held in memory at most (with a folder).
    """

    def __init__(self, factory: Callable[[int], ClientState], folder: Path | None = None, max_cached: int = 64) -> None:
        if max_cached < 1:
            raise ValueError(f"max_cached must be >= 1, got {max_cached}")
        self.factory = factory
        self.folder = Path(folder) if folder is not None else None
        self.max_cached = max_cached
        self.tag = 0
        self._cache: OrderedDict[int, ClientState] = OrderedDict()
        self._dirty: set[int] = set()
        self._files: dict[int, int] = {}  # partition -> tag of its newest file
        self._pinned: dict[int, int] = {}  # partition -> tag named by the last checkpoint
        self._nbytes: dict[int, int] = {}
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def __contains__(self, partition_id: int) -> bool:
        return partition_id in self._nbytes

    def __len__(self) -> int:
        return len(self._nbytes)

    @property
    def cached(self) -> list[int]:
        """Partitions held in memory, least recently used first."""
        return list(self._cache)

    def add(self, partition_id: int, state: ClientState) -> None:
        """Add a new client's state."""
        self._put(partition_id, state)
        self._dirty.add(partition_id)
        self._nbytes[partition_id] = state.nbytes()
        self._evict()

    def get(self, partition_id: int) -> ClientState:
        """Return a client's state, loading it from disk if it left the cache.

        Call :meth:`changed` after modifying it.
        """
        if partition_id in self._cache:
            self._cache.move_to_end(partition_id)
            return self._cache[partition_id]
        if partition_id not in self._files:
            raise KeyError(f"no state for partition {partition_id}")
        state = self.factory(partition_id)
        state.load_dict(safe_load(self._path(partition_id, self._files[partition_id])))
        self._put(partition_id, state)
        self._evict(keep=partition_id)
        return state

    def changed(self, partition_id: int) -> None:
        """Mark a cached client's state as modified (it is written when it leaves the cache)."""
        self._dirty.add(partition_id)
        self._nbytes[partition_id] = self._cache[partition_id].nbytes()

    def nbytes(self) -> int:
        """Bytes of every client's state, cached or not."""
        return sum(self._nbytes.values())

    def items(self) -> Iterator[tuple[int, ClientState]]:
        """Every client's state, by partition id (loads each in turn)."""
        for partition_id in sorted(self._nbytes):
            yield partition_id, self.get(partition_id)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Write every changed client and return what a checkpoint must hold to find them again."""
        if self.folder is None:
            return {"embedded": {p: s.to_dict() for p, s in self._cache.items()}}
        for partition_id in list(self._dirty):
            if partition_id in self._cache:
                self._write(partition_id)
        return {"files": dict(self._files), "nbytes": dict(self._nbytes)}

    def commit(self) -> None:
        """The checkpoint naming :meth:`state_dict`'s files is in place: drop older versions."""
        if self.folder is None:
            return
        self._pinned = dict(self._files)
        self.tag += 1
        self._remove_unreferenced()

    def load_state_dict(self, snapshot: dict[str, Any]) -> None:
        """Go back to the state of ``snapshot`` (from :meth:`state_dict`, read from a checkpoint)."""
        self._cache.clear()
        self._dirty.clear()
        self._nbytes.clear()
        if "embedded" in snapshot:
            for partition_id, data in snapshot["embedded"].items():
                state = self.factory(int(partition_id))
                state.load_dict(data)
                self.add(int(partition_id), state)
            return
        if self.folder is None:
            raise ValueError("this checkpoint keeps client state in files; the store needs a folder")
        self._files = {int(p): int(t) for p, t in snapshot["files"].items()}
        self._pinned = dict(self._files)
        self.tag = max(self._files.values(), default=0) + 1
        for partition_id, tag in self._files.items():
            path = self._path(partition_id, tag)
            if not path.exists():
                raise FileNotFoundError(f"checkpoint names {path}, which is missing")
        self._nbytes = {int(p): int(n) for p, n in snapshot["nbytes"].items()}
        self._remove_unreferenced()

    # --------------------------------------------------------------- helpers
    def _put(self, partition_id: int, state: ClientState) -> None:
        self._cache[partition_id] = state
        self._cache.move_to_end(partition_id)

    def _evict(self, keep: int | None = None) -> None:
        if self.folder is None:
            return
        while len(self._cache) > self.max_cached:
            partition_id = next(iter(self._cache))
            if partition_id == keep:
                self._cache.move_to_end(partition_id)
                continue
            if partition_id in self._dirty:
                self._write(partition_id)
            del self._cache[partition_id]

    def _write(self, partition_id: int) -> None:
        atomic_save(self._cache[partition_id].to_dict(), self._path(partition_id, self.tag))
        previous = self._files.get(partition_id)
        self._files[partition_id] = self.tag
        self._dirty.discard(partition_id)
        if previous is not None and previous != self.tag and self._pinned.get(partition_id) != previous:
            remove_saved(self._path(partition_id, previous))

    def _path(self, partition_id: int, tag: int) -> Path:
        assert self.folder is not None
        return self.folder / f"{partition_id}.{tag}.pt"

    def _remove_unreferenced(self) -> None:
        assert self.folder is not None
        keep = {self._path(p, t).name for p, t in self._files.items()}
        for path in [*self.folder.glob("*.pt"), *self.folder.glob(f"*.pt{HASH_SUFFIX}")]:
            if path.name.removesuffix(HASH_SUFFIX) not in keep:
                path.unlink(missing_ok=True)
