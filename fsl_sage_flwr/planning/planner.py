"""Plan a run before training it: each algorithm's bytes and memory on a user's own split."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fsl_sage_flwr.core.alignment import AlignmentSettings
from fsl_sage_flwr.core.models import SplitModel
from fsl_sage_flwr.core.node_sampling import WARM_UP_MODES
from fsl_sage_flwr.core.settings import require_argument
from fsl_sage_flwr.planning.footprint import ClientMemory, ServerParts, client_memory, server_parts
from fsl_sage_flwr.planning.traffic import (
    ModelBytes,
    RoundBytes,
    Schedule,
    cse_fsl_rounds,
    fedavg_rounds,
    fsl_sage_rounds,
    npy_nbytes,
    splitfed_rounds,
    uploaded_batch_sizes,
)
from fsl_sage_flwr.transport.local_training import LocalTraining

#: The algorithms planned, by their run-config names.
ALGORITHMS = ("fsl-sage", "cse-fsl", "splitfed-ms", "splitfed-ss", "fedavg")


@dataclass(frozen=True)
class AlgorithmPlan:
    """One algorithm's forecast: bytes per round and over the run, client and server memory.

    Attributes
    ----------
    algorithm : str
        Its run-config name (``fsl-sage``, ``cse-fsl``, ``splitfed-ms``, ``splitfed-ss``, ``fedavg``).
    rounds : tuple[RoundBytes, ...]
        Bytes down and up of all clients together, round by round (FSL-SAGE's
        warm-up counts in round 1, as the byte ledger books it).
    client_memory : ClientMemory
        What one client holds while it trains, measured on the real modules.
    server_memory : int
        Bytes the server holds at the end of the run: models, optimizer state,
        and for FSL-SAGE every client's aux, its optimizer and its buffer.
    """

    algorithm: str
    rounds: tuple[RoundBytes, ...]
    client_memory: ClientMemory
    server_memory: int

    @property
    def down_bytes(self) -> int:
        """Bytes all clients receive over the run."""
        return sum(r.down for r in self.rounds)

    @property
    def up_bytes(self) -> int:
        """Bytes all clients send over the run."""
        return sum(r.up for r in self.rounds)

    @property
    def total_bytes(self) -> int:
        """Bytes down and up over the run."""
        return self.down_bytes + self.up_bytes

    @property
    def down_per_round(self) -> float:
        """Mean bytes down per round."""
        return self.down_bytes / len(self.rounds)

    @property
    def up_per_round(self) -> float:
        """Mean bytes up per round."""
        return self.up_bytes / len(self.rounds)


@dataclass(frozen=True)
class Plan:
    """Every algorithm's forecast for one split and one set of settings.

    Attributes
    ----------
    algorithms : dict[str, AlgorithmPlan]
        By run-config name, in :data:`ALGORITHMS` order.
    models : ModelBytes
        The split's part sizes and cut shape.
    schedule : Schedule
        Clients, their samples, rounds and sampling.
    training : LocalTraining
        The local-training settings planned with.
    alignment : AlignmentSettings
        FSL-SAGE's alignment settings planned with.
    exact : bool
        Whether every algorithm's bytes are exact: every client trains every
        round. Otherwise FSL-SAGE's still are (the plan repeats its seeded
        sampling), the others' are expectations over the sampled clients.
    notes : tuple[str, ...]
        What the figures leave out or take as an expectation, in sentences.
    """

    algorithms: dict[str, AlgorithmPlan]
    models: ModelBytes
    schedule: Schedule
    training: LocalTraining
    alignment: AlignmentSettings
    exact: bool
    notes: tuple[str, ...] = field(default=())

    def __getitem__(self, algorithm: str) -> AlgorithmPlan:
        """The forecast of ``algorithm`` (its run-config name)."""
        return self.algorithms[algorithm]


def plan(
    spec: Any,
    *,
    samples_per_client: int | Sequence[int],
    num_server_rounds: int,
    clients: int | None = None,
    training: LocalTraining | None = None,
    alignment: AlignmentSettings | None = None,
    fraction_train: float = 1.0,
    min_train_nodes: int = 1,
    warm_up: str = "sampled",
    input_shape: tuple[int, ...] | None = None,
    seed: int = 0,
) -> Plan:
    """Forecast each algorithm's bytes and memory on ``spec`` without training it.

    Bytes follow the messages each algorithm sends, counted as the run's byte
    ledger counts them. Memory is measured: two local steps of each
    algorithm's client step on one full batch of random inputs (the second
    holds the optimizer state the first made), and one server step.

    Parameters
    ----------
    spec : SplitSpec or SplitModel
        The split: a :class:`~fsl_sage_flwr.plugin.SplitSpec` (or anything whose
        ``build()`` returns a :class:`~fsl_sage_flwr.core.models.SplitModel`), or
        a built ``SplitModel``.
    samples_per_client : int or Sequence[int]
        Training samples of every client, or of each client by partition id.
    num_server_rounds : int
        Federated rounds.
    clients : int, optional
        Number of clients; required with one ``samples_per_client`` for all,
        else the length of the sequence (and must equal it if given).
    training : LocalTraining, optional
        Batch size, local epochs, upload interval q, upload dtype, Adam; the app's defaults.
    alignment : AlignmentSettings, optional
        FSL-SAGE's alignment interval l, buffer size and seed; the app's defaults.
    fraction_train, min_train_nodes : float, int
        Clients sampled per round, as the strategies sample.
    warm_up : str
        FSL-SAGE's ``warm-up``: ``"sampled"`` (a client's warm-up in the round it is
        first sampled) or ``"all"`` (every client's before round 1).
    input_shape : tuple[int, ...], optional
        One input sample's shape; taken from the spec's test set when it has one.
    seed : int
        Seeds the modules' copies and the random batch the memory is measured on.

    Raises
    ------
    ValueError
        Naming the argument, for a count below its minimum, sample counts that
        disagree with ``clients``, or a missing ``input_shape``.
    """
    training = training or LocalTraining()
    alignment = alignment or AlignmentSettings(seed=training.seed)
    schedule = _schedule(samples_per_client, clients, num_server_rounds, fraction_train, min_train_nodes, warm_up)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        split = copy.deepcopy(spec) if isinstance(spec, SplitModel) else spec.build()
        if split.server is None or split.aux is None:
            raise ValueError("spec must give a client, a server and an aux model")
        shape = _input_shape(spec, input_shape)
        x = torch.randn(training.batch_size, *shape)
        num_classes = _probe_classes(split, x, shape)
        y = torch.randint(0, num_classes, (training.batch_size,))
        memory = client_memory(split, x, y, training)
        with torch.no_grad():
            z = split.client.train()(x)
        parts = server_parts(split, z, y, training)
    models = ModelBytes(
        client=parts.full - parts.server,
        server=parts.server,
        aux=parts.aux,
        cut_shape=tuple(int(d) for d in z.shape[1:]),
        client_npy=_state_npy_nbytes(split.client),
        aux_npy=_state_npy_nbytes(split.aux),
    )
    traffic = {
        "fsl-sage": fsl_sage_rounds(models, schedule, training, alignment),
        "cse-fsl": cse_fsl_rounds(models, schedule, training),
        "splitfed-ms": splitfed_rounds(models, schedule, training, "ms"),
        "splitfed-ss": splitfed_rounds(models, schedule, training, "ss"),
        "fedavg": fedavg_rounds(models, schedule),
    }
    servers = _server_memory(parts, models, schedule, training, alignment)
    notes = []
    if alignment.threshold > 0:
        budget = f"up to {alignment.budget_bytes:,} bytes" if alignment.budget_bytes else "without a limit"
        notes.append(f"align-threshold > 0: fidelity-triggered aux sends ({budget}) are not in FSL-SAGE's figures")
    if not schedule.everyone_trains:
        fsl_sage = (
            "FSL-SAGE follows its seeded sampling"
            if warm_up == "all"
            else 'FSL-SAGE\'s first draws of each client depend on node ids (warm-up "sampled"): expectations'
        )
        notes.append(f"not every client trains each round: {fsl_sage}, the others are expectations")
    return Plan(
        algorithms={
            name: AlgorithmPlan(name, tuple(traffic[name]), memory[name], servers[name]) for name in ALGORITHMS
        },
        models=models,
        schedule=schedule,
        training=training,
        alignment=alignment,
        exact=schedule.everyone_trains,
        notes=tuple(notes),
    )


def _schedule(
    samples_per_client: int | Sequence[int],
    clients: int | None,
    num_server_rounds: int,
    fraction_train: float,
    min_train_nodes: int,
    warm_up: str = "sampled",
) -> Schedule:
    """Check the run's shape and build its :class:`Schedule`; errors name the argument."""
    if isinstance(samples_per_client, int):
        require_argument(clients is not None, "clients", clients, "given with one samples_per_client for all")
        require_argument(clients >= 1, "clients", clients, ">= 1")
        samples = (samples_per_client,) * clients
    else:
        samples = tuple(int(n) for n in samples_per_client)
        require_argument(len(samples) >= 1, "samples_per_client", samples_per_client, "one count per client")
        if clients is not None:
            require_argument(clients == len(samples), "clients", clients, f"the {len(samples)} sample counts given")
    require_argument(min(samples) >= 2, "samples_per_client", min(samples), ">= 2 for every client")
    require_argument(num_server_rounds >= 1, "num_server_rounds", num_server_rounds, ">= 1")
    require_argument(0.0 < fraction_train <= 1.0, "fraction_train", fraction_train, "in (0, 1]")
    require_argument(min_train_nodes >= 1, "min_train_nodes", min_train_nodes, ">= 1")
    require_argument(warm_up in WARM_UP_MODES, "warm_up", warm_up, f"one of {list(WARM_UP_MODES)}")
    return Schedule(samples, num_server_rounds, fraction_train, min_train_nodes, warm_up)


def _probe_classes(split: SplitModel, x: torch.Tensor, shape: tuple[int, ...]) -> int:
    """Run ``x`` through client and server (eval mode); return the classes; a misfit names the input shape."""
    try:
        with torch.no_grad():
            logits = split.server.eval()(split.client.eval()(x))
    except RuntimeError as err:
        raise ValueError(f"the split does not take inputs of input_shape {shape}: {err}") from err
    if logits.dim() != 2:
        raise ValueError(f"the server model must output (batch, classes) logits, got shape {tuple(logits.shape)}")
    return int(logits.shape[1])


def _state_npy_nbytes(module: nn.Module) -> int:
    """Bytes of a module's state-dict arrays serialised one by one as ``.npy``."""
    return sum(npy_nbytes(tuple(t.shape), str(t.detach().cpu().numpy().dtype)) for t in module.state_dict().values())


def _input_shape(spec: Any, input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
    """The given input shape, or one test sample's shape from the spec."""
    if input_shape is not None:
        return tuple(int(d) for d in input_shape)
    testset = getattr(spec, "_testset", None)
    if testset is None:
        raise ValueError("input_shape is needed: the spec has no test set to read one sample's shape from")
    return tuple(testset.images.shape[1:])


def _server_memory(
    parts: ServerParts,
    models: ModelBytes,
    schedule: Schedule,
    training: LocalTraining,
    alignment: AlignmentSettings,
) -> dict[str, int]:
    """What each server holds at the end of the run, as its strategy's ``server_memory_bytes`` counts it."""
    trained = parts.server + parts.server_optimizer
    sample_bytes = models.cut_values * 4 + 8  # a buffered z is decoded to float32, its label int64
    # FSL-SAGE's buffers follow its seeded sampling: the warm-up batch, then each round a client trains.
    trained_rounds = [0] * len(schedule.samples)
    known: set[int] = set()  # clients the server keeps state for: the warmed-up ones
    for sample, warmed in schedule.fsl_sage_draws(alignment.seed):
        known |= warmed
        for client in sample:
            trained_rounds[client] += 1
    buffers = 0
    for client in known:
        n, count = schedule.samples[client], trained_rounds[client]
        uploaded = min(training.batch_size, n) + count * sum(uploaded_batch_sizes(n, training))
        buffers += min(alignment.buffer_size, uploaded) * sample_bytes
    per_client_aux = len(known) * (parts.aux + parts.aux_optimizer)
    return {
        "fsl-sage": trained + per_client_aux + buffers,
        "cse-fsl": trained,
        # SFL-V1: the averaged server model plus one copy and its Adam state per sampled client
        "splitfed-ms": parts.server + schedule.sampled_per_round * trained,
        "splitfed-ss": trained,
        "fedavg": parts.full,
    }
