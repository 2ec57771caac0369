"""The server's per-client FSL-SAGE state, built fresh: a seeded aux model, its optimizer, an empty buffer."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fsl_sage_flwr.core.alignment import AlignmentSettings
from fsl_sage_flwr.core.buffer import SmashedBuffer
from fsl_sage_flwr.core.checkpoint import ClientState
from fsl_sage_flwr.core.memory import state_nbytes
from fsl_sage_flwr.core.training import derive_seed, make_adam


class ClientStateFactory:
    """Builds the state the server keeps per client (Nair et al., ICML 2025, Alg. 1).

    A client's first auxiliary model depends on the run's seed and its partition
    id alone, so it is the same whichever node holds the partition and whenever
    it joins.

    Parameters
    ----------
    aux_factory : Callable[[], nn.Module]
        Builds a fresh auxiliary model.
    alignment : AlignmentSettings
        Seed, Adam settings and buffer cap.
    device : torch.device
        Where the aux models live.
    """

    def __init__(self, aux_factory: Callable[[], nn.Module], alignment: AlignmentSettings, device: torch.device):
        self.aux_factory = aux_factory
        self.alignment = alignment
        self.device = device
        self._aux_bytes: int | None = None

    def new(self, partition_id: int) -> ClientState:
        """A new client's state with its seeded aux; seeds the global RNG as it does."""
        torch.manual_seed(derive_seed(self.alignment.seed, partition_id, "aux-init"))
        return self._state(self.aux_factory().to(self.device))

    def initial_aux(self, partition_id: int) -> nn.Module:
        """The aux :meth:`new` builds for ``partition_id``; leaves the global RNG alone."""
        with torch.random.fork_rng(devices=[]):
            return self.new(partition_id).aux

    def empty(self, partition_id: int) -> ClientState:
        """A blank state to load a stored one into; leaves the global RNG alone."""
        with torch.random.fork_rng(devices=[]):
            aux = self.aux_factory().to(self.device)
        return self._state(aux)

    def aux_nbytes(self) -> int:
        """Bytes of one aux model's arrays, what each extra alignment sends to its client."""
        if self._aux_bytes is None:
            with torch.random.fork_rng(devices=[]):
                self._aux_bytes = state_nbytes(self.aux_factory())
        return self._aux_bytes

    def _state(self, aux: nn.Module) -> ClientState:
        optimizer = make_adam(aux, self.alignment.lr, self.alignment.weight_decay)
        return ClientState(aux, optimizer, SmashedBuffer(self.alignment.buffer_size))
