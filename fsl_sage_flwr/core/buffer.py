"""FIFO buffer of uploaded smashed activations and labels, one per client."""

from __future__ import annotations

from collections import deque

import torch


class SmashedBuffer:
    """Keep the newest ``capacity`` uploaded ``(z, y)`` samples of one client.

    The server aligns a client's auxiliary model on this buffer (Nair et al.,
    ICML 2025, Sec. 3): older activations were computed by an older client model,
    so the oldest samples leave first once the cap is reached.

    Parameters
    ----------
    capacity : int
        Maximum number of samples kept (1000 in the paper).
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"SmashedBuffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        # Batches are stored whole; trimming cuts the oldest batch when needed.
        self._batches: deque[tuple[torch.Tensor, torch.Tensor]] = deque()
        self._size = 0

    def __len__(self) -> int:
        """Return the number of samples held."""
        return self._size

    def append(self, z: torch.Tensor, y: torch.Tensor) -> None:
        """Add one uploaded batch, dropping the oldest samples beyond the cap.

        Parameters
        ----------
        z : torch.Tensor
            Cut-layer activations, shape ``(n, *cut_shape)``.
        y : torch.Tensor
            Labels, shape ``(n,)``.
        """
        if z.shape[0] != y.shape[0]:
            raise ValueError(f"z holds {z.shape[0]} samples but y holds {y.shape[0]} labels")
        if z.shape[0] == 0:
            return
        self._batches.append((z.detach().clone(), y.detach().clone()))
        self._size += z.shape[0]
        self._trim()

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Return all held samples, oldest first, as ``(Z, Y)``."""
        if not self._batches:
            raise ValueError("SmashedBuffer is empty")
        zs, ys = zip(*self._batches)
        return torch.cat(zs), torch.cat(ys)

    def state_dict(self) -> dict[str, object]:
        """Return the held samples as plain tensors, for ``torch.save``."""
        if not self._batches:
            return {"capacity": self.capacity, "z": None, "y": None}
        z, y = self.tensors()
        return {"capacity": self.capacity, "z": z, "y": y}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Replace the held samples with those of :meth:`state_dict`."""
        self._batches.clear()
        self._size = 0
        self.capacity = int(state["capacity"])
        if state["z"] is not None:
            self.append(state["z"], state["y"])

    def nbytes(self) -> int:
        """Bytes of the held tensors."""
        return sum(z.nbytes + y.nbytes for z, y in self._batches)

    def _trim(self) -> None:
        excess = self._size - self.capacity
        while excess > 0:
            z, y = self._batches[0]
            if z.shape[0] <= excess:
                self._batches.popleft()
                self._size -= z.shape[0]
                excess -= z.shape[0]
            else:
                self._batches[0] = (z[excess:], y[excess:])
                self._size -= excess
                excess = 0
