"""Every algorithm's server strategy and node client, built from one split network's parts.

FSL-SAGE, CSE-FSL, SplitFed-MS, SplitFed-SS and Flower's own FedAvg on the joined
model. The package's ServerApp and ClientApp build through these functions, and
so does :class:`~fsl_sage_flwr.plugin.SplitSpec` for a user's own apps: a built-in
model and a user's own take the same path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from flwr.app import RecordDict
from flwr.serverapp.strategy import Strategy
from torch import nn

from fsl_sage_flwr.clients import CSEFSLClient, FedAvgClient, FSLSageClient, SplitFedClient
from fsl_sage_flwr.core.alignment import AlignmentSettings
from fsl_sage_flwr.core.models import SplitModel, build_full_model
from fsl_sage_flwr.data import ArrayDataset
from fsl_sage_flwr.strategies.cse_fsl import CSEFSL
from fsl_sage_flwr.strategies.fsl_sage import FSLSage
from fsl_sage_flwr.strategies.joined_fedavg import JoinedFedAvg
from fsl_sage_flwr.strategies.splitfed import SplitFed
from fsl_sage_flwr.transport.ledger import ByteLedger
from fsl_sage_flwr.transport.local_training import LocalTraining

#: The client classes, by algorithm name.
CLIENT_CLASSES: dict[str, type] = {
    "fsl-sage": FSLSageClient,
    "cse-fsl": CSEFSLClient,
    "fedavg": FedAvgClient,
    "splitfed-ms": SplitFedClient,
    "splitfed-ss": SplitFedClient,
}
#: The split model's parts a node of each algorithm holds.
CLIENT_PARTS: dict[str, tuple[str, ...]] = {
    "fsl-sage": ("client", "aux"),
    "cse-fsl": ("client", "aux"),
    "fedavg": ("client", "server"),
    "splitfed-ms": ("client",),
    "splitfed-ss": ("client",),
}
#: Every algorithm a split network can be trained with.
ALGORITHM_NAMES: tuple[str, ...] = tuple(CLIENT_CLASSES)

#: The client type any algorithm returns.
SplitClient = FSLSageClient | CSEFSLClient | FedAvgClient | SplitFedClient


def check_algorithm(name: str) -> str:
    """Return ``name`` if it is an algorithm; otherwise raise a ValueError listing them."""
    if name not in CLIENT_CLASSES:
        raise ValueError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHM_NAMES)}")
    return name


def split_strategy(
    algorithm: str,
    split: SplitModel,
    *,
    num_classes: int | None,
    training: LocalTraining,
    testset: ArrayDataset | None = None,
    alignment: AlignmentSettings | None = None,
    aux_factory: Callable[[], nn.Module] | None = None,
    ledger: ByteLedger | None = None,
    **kwargs: Any,
) -> Strategy:
    """Build ``algorithm``'s server strategy around ``split``'s parts (Flower's Message API).

    Each returned strategy offers ``initial_arrays()``, ``evaluate_global`` (for
    ``start(evaluate_fn=...)``) and ``server_memory_bytes()``.

    Parameters
    ----------
    algorithm : str
        One of :data:`ALGORITHM_NAMES`.
    split : SplitModel
        The freshly built client, server and aux parts; the strategy trains them.
    num_classes : int or None
        Number of classes; ``None`` for float labels (``split.objective`` says what labels are).
    training : LocalTraining
        What every node trains with.
    testset : ArrayDataset, optional
        Held-out data the server evaluates on after every round.
    alignment : AlignmentSettings, optional
        FSL-SAGE's alignment settings; defaults to ``AlignmentSettings(seed=training.seed)``.
    aux_factory : Callable[[], nn.Module], optional
        FSL-SAGE: builds a fresh aux model per client; required for ``"fsl-sage"``.
    ledger : ByteLedger, optional
        SplitFed-MS books its fed server's model exchange here.
    **kwargs
        The strategy's own keywords: ``fraction_train``, ``min_train_nodes``,
        ``min_available_nodes``, ``device``; for the split algorithms also
        ``max_rounds_without_replies``, ``node_wait_timeout``, ``max_examples``; for
        FSL-SAGE and CSE-FSL ``server_order``; for FSL-SAGE ``warm_up_attempts``,
        ``state_dir``, ``max_cached_clients``, ``fidelity_samples``.

    Raises
    ------
    ValueError
        For an unknown algorithm, or FSL-SAGE without ``aux_factory``.
    """
    check_algorithm(algorithm)
    if algorithm == "fedavg":
        return JoinedFedAvg(
            full_model=build_full_model(split), training=training, testset=testset, objective=split.objective, **kwargs
        )
    parts = {
        "client_model": split.client,
        "server_model": split.server,
        "cut_shape": split.cut_shape,
        "num_classes": num_classes,
        "training": training,
        "testset": testset,
        "objective": split.objective,
        **kwargs,
    }
    if algorithm == "fsl-sage":
        if aux_factory is None:
            raise ValueError("FSL-SAGE needs aux_factory: a function building a fresh aux model per client")
        return FSLSage(
            shared_model=split.client,
            aux_factory=aux_factory,
            alignment=alignment or AlignmentSettings(seed=training.seed),
            **parts,
        )
    if algorithm == "cse-fsl":
        return CSEFSL(shared_model=nn.ModuleDict({"client": split.client, "aux": split.aux}), **parts)
    return SplitFed(mode=algorithm.rsplit("-", 1)[1], batch_size=training.batch_size, ledger=ledger, **parts)


def split_client(
    algorithm: str,
    split: SplitModel,
    trainset: ArrayDataset,
    partition_id: int,
    state: RecordDict,
    device: torch.device | str = "cpu",
) -> SplitClient:
    """Build ``algorithm``'s node client on ``split``'s parts (see :data:`CLIENT_PARTS`).

    FSL-SAGE, CSE-FSL and FedAvg clients are NumPyClients; the SplitFed client
    answers per-batch messages (see :func:`fsl_sage_flwr.client_replies.register_split_client`).

    Parameters
    ----------
    algorithm : str
        One of :data:`ALGORITHM_NAMES`.
    split : SplitModel
        Holds at least the parts the algorithm's node needs.
    trainset : ArrayDataset
        The node's training data.
    partition_id : int
        The node's stable id.
    state : RecordDict
        The node's ``Context.state``, kept between rounds.
    device : torch.device or str
        Where the node trains.
    """
    return CLIENT_CLASSES[check_algorithm(algorithm)](split, trainset, partition_id, state, device)


def node_parts(algorithm: str, split: SplitModel) -> SplitModel:
    """Return ``split`` without the parts a node of ``algorithm`` does not hold."""
    parts = CLIENT_PARTS[check_algorithm(algorithm)]
    return SplitModel(
        client=split.client,
        server=split.server if "server" in parts else None,
        aux=split.aux if "aux" in parts else None,
        cut_shape=split.cut_shape,
        objective=split.objective,
    )
