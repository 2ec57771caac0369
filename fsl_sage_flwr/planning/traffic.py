"""The bytes each algorithm's messages carry, worked out from model sizes and settings without training.

Every figure here follows the records the transport sends (``fsl_sage_flwr.transport``:
``requests``, ``replies``, ``splitfed_step``) and counts them as the byte ledger
does (:func:`fsl_sage_flwr.transport.ledger.record_nbytes`): the arrays' shape
times their itemsize, labels and batch sizes included, config and metric scalars
left out. The replies of FSL-SAGE and CSE-FSL travel in Flower's ``NumPyClient``
layout, whose arrays carry no declared shape or dtype: the ledger counts their
serialised ``.npy`` bytes, header included (:func:`npy_nbytes`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fsl_sage_flwr.core.alignment import AlignmentSettings
from fsl_sage_flwr.core.node_sampling import sample_round_nodes
from fsl_sage_flwr.transport.compression import upload_encoding
from fsl_sage_flwr.transport.local_training import LocalTraining

#: Bytes of one label and of one batch size on the wire (int64).
_INT64 = 8
#: SplitFed's activations and gradients always travel as float32.
_FLOAT32 = 4


@dataclass(frozen=True)
class ModelBytes:
    """State-dict bytes (parameters and buffers) of the parts of a split, and its cut.

    Attributes
    ----------
    client, server, aux : int
        Bytes of the client part, the server part and one auxiliary model.
    cut_shape : tuple[int, ...]
        Shape of one sample's cut-layer activation.
    client_npy, aux_npy : int
        Bytes of the client part's and the aux's arrays serialised as ``.npy``
        (each array's header and data): what a ``NumPyClient`` reply carries.
    """

    client: int
    server: int
    aux: int
    cut_shape: tuple[int, ...]
    client_npy: int
    aux_npy: int

    @property
    def cut_values(self) -> int:
        """Values in one sample's cut-layer activation."""
        return math.prod(self.cut_shape)


@dataclass(frozen=True)
class RoundBytes:
    """Bytes all clients together receive (down) and send (up) in one round."""

    round: int
    down: int
    up: int


@dataclass(frozen=True)
class Schedule:
    """Who takes part in a run: clients' sample counts, rounds and per-round sampling.

    Attributes
    ----------
    samples : tuple[int, ...]
        Training samples of each client, by partition id.
    num_server_rounds : int
        Federated rounds.
    fraction_train : float
        Share of clients sampled per round.
    min_train_nodes : int
        Fewest clients sampled per round.
    warm_up : str
        FSL-SAGE's ``warm-up``: ``"all"`` warms every client up before round 1,
        ``"sampled"`` each one in the round it is first sampled.
    """

    samples: tuple[int, ...]
    num_server_rounds: int
    fraction_train: float = 1.0
    min_train_nodes: int = 1
    warm_up: str = "sampled"

    @property
    def sampled_per_round(self) -> int:
        """Clients sampled each round, as the strategies (and Flower's FedAvg) count them."""
        wanted = max(int(len(self.samples) * self.fraction_train), self.min_train_nodes)
        return min(wanted, len(self.samples))

    @property
    def everyone_trains(self) -> bool:
        """Whether every client is sampled every round (then every figure is exact)."""
        return self.sampled_per_round == len(self.samples)

    def fsl_sage_draws(self, seed: int) -> list[tuple[set[int], set[int]]]:
        """Per round, the partitions FSL-SAGE samples and those of them it warms up first.

        The strategy's seeded draw (see
        :func:`~fsl_sage_flwr.core.node_sampling.sample_round_nodes`) over its pool: the
        warmed-up clients by partition id, then, with ``warm_up="sampled"``, the others,
        which the strategy lists by node id and this forecast by partition id (so
        with ``fraction_train`` < 1 the draw is exact with ``"all"`` alone).
        """
        clients = range(len(self.samples))
        warmed: set[int] = set(clients) if self.warm_up == "all" else set()
        draws = []
        for server_round in range(1, self.num_server_rounds + 1):
            pool = sorted(warmed) + [c for c in clients if c not in warmed]
            sample = set(sample_round_nodes(pool, self.fraction_train, self.min_train_nodes, seed, server_round))
            new = set(clients) if self.warm_up == "all" and server_round == 1 else sample - warmed
            warmed |= sample
            draws.append((sample, new))
        return draws


def step_batch_sizes(num_samples: int, training: LocalTraining) -> list[int]:
    """The batch size of every local step of one round, across its epochs (a one-sample tail is skipped)."""
    full, rest = divmod(num_samples, training.batch_size)
    epoch = [training.batch_size] * full + ([rest] if rest >= 2 else [])
    return epoch * training.local_epochs


def uploaded_batch_sizes(num_samples: int, training: LocalTraining) -> list[int]:
    """The sizes of the batches a client keeps for upload: every q-th step, counted across epochs."""
    return step_batch_sizes(num_samples, training)[:: training.upload_interval]


def npy_nbytes(shape: tuple[int, ...], dtype: str) -> int:
    """Bytes of an array of ``shape`` and ``dtype`` serialised as ``.npy``: its header, then its data."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(stream, header)
    return len(stream.getvalue()) + math.prod(shape) * np.dtype(dtype).itemsize


def upload_bytes(batch_sizes: Sequence[int], cut_shape: tuple[int, ...], upload_dtype: str) -> int:
    """Bytes of an upload in a ``NumPyClient`` reply: ``z`` encoded (and its int8 scale), ``y``, batch sizes."""
    encoding = upload_encoding(upload_dtype)
    samples = sum(batch_sizes)
    arrays = [((samples, *cut_shape), encoding.wire_dtype), ((samples,), "int64"), ((len(batch_sizes),), "int64")]
    if encoding.has_scale:
        arrays.append(((cut_shape[0],), "float32"))
    return sum(npy_nbytes(shape, dtype) for shape, dtype in arrays)


def fedavg_rounds(models: ModelBytes, schedule: Schedule) -> list[RoundBytes]:
    """Flower's FedAvg on the joined model: the whole model down and up, per sampled client."""
    full = models.client + models.server
    count = schedule.sampled_per_round
    return [RoundBytes(r, count * full, count * full) for r in range(1, schedule.num_server_rounds + 1)]


def cse_fsl_rounds(models: ModelBytes, schedule: Schedule, training: LocalTraining) -> list[RoundBytes]:
    """CSE-FSL: client model and aux both ways, the uploads every q-th step up."""
    shared = models.client + models.aux

    def client_bytes(n: int) -> tuple[float, float]:
        up = (
            models.client_npy
            + models.aux_npy
            + upload_bytes(uploaded_batch_sizes(n, training), models.cut_shape, training.upload_dtype)
        )
        return shared, up

    return _expected_rounds(schedule, client_bytes)


def splitfed_rounds(models: ModelBytes, schedule: Schedule, training: LocalTraining, mode: str) -> list[RoundBytes]:
    """SplitFed: per batch, activations and labels up, the cut-layer gradient down; models at the ends.

    SFL-V1 (``mode="ms"``) also books the server-side copy going to the fed server and back.
    """
    fed_server = models.server if mode == "ms" else 0
    values = models.cut_values

    def client_bytes(n: int) -> tuple[float, float]:
        sizes = step_batch_sizes(n, training)
        activations = sum(sizes) * values * _FLOAT32
        down = models.client + activations + fed_server
        up = models.client + activations + sum(sizes) * _INT64 + len(sizes) * _INT64 + fed_server
        return down, up

    return _expected_rounds(schedule, client_bytes)


def fsl_sage_rounds(
    models: ModelBytes, schedule: Schedule, training: LocalTraining, alignment: AlignmentSettings
) -> list[RoundBytes]:
    """FSL-SAGE, following the strategy's seeded sampling and its alignment schedule.

    A client's warm-up (the client model down, one batch of activations up) comes
    before round 1 or before the round it is first sampled (``schedule.warm_up``),
    and aligns its aux; an aligned aux travels
    with that client's next request. After every ``alignment.interval``-th round
    but the last, the auxes of the clients that uploaded since their last
    alignment are aligned. Fidelity-triggered alignments
    (``alignment.threshold > 0``) depend on measurements and are not counted.
    """
    shape, dtype = models.cut_shape, training.upload_dtype
    clients = range(len(schedule.samples))
    aux_pending = {c: True for c in clients}  # a warm-up aligns the client's aux
    uploaded_since_alignment = {c: False for c in clients}
    rounds = []
    for server_round, (sample, warmed) in enumerate(schedule.fsl_sage_draws(alignment.seed), start=1):
        down = len(warmed) * models.client
        up = sum(upload_bytes([min(training.batch_size, schedule.samples[c])], shape, dtype) for c in warmed)
        for client in sorted(sample):
            n = schedule.samples[client]
            down += models.client + (models.aux if aux_pending[client] else 0)
            up += models.client_npy + upload_bytes(uploaded_batch_sizes(n, training), shape, dtype)
            aux_pending[client] = False
            uploaded_since_alignment[client] = True
        if server_round < schedule.num_server_rounds and server_round % alignment.interval == 0:
            for client in clients:
                if uploaded_since_alignment[client]:
                    aux_pending[client], uploaded_since_alignment[client] = True, False
        rounds.append(RoundBytes(server_round, down, up))
    return rounds


def activation_share(models: ModelBytes, schedule: Schedule, training: LocalTraining) -> int:
    """Bytes of FSL-SAGE's uploaded ``z`` values alone over the run (warm-up included), as encoded."""
    itemsize = upload_encoding(training.upload_dtype).itemsize
    per_round = sum(sum(uploaded_batch_sizes(n, training)) for n in schedule.samples)
    share = schedule.sampled_per_round / len(schedule.samples)
    warm_up = sum(min(training.batch_size, n) for n in schedule.samples)
    samples = warm_up + per_round * share * schedule.num_server_rounds
    return round(samples * models.cut_values * itemsize)


def _expected_rounds(schedule: Schedule, client_bytes: Callable[[int], tuple[float, float]]) -> list[RoundBytes]:
    """Rounds whose sampled clients are any ``sampled_per_round`` of all: each client's bytes times its chance."""
    share = schedule.sampled_per_round / len(schedule.samples)
    pairs = [client_bytes(n) for n in schedule.samples]
    down = round(share * sum(d for d, _ in pairs))
    up = round(share * sum(u for _, u in pairs))
    return [RoundBytes(r, down, up) for r in range(1, schedule.num_server_rounds + 1)]
