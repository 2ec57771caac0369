"""Registry of algorithms: how each one's server and client are built from the run config.

With the two app entry modules, this is where the core meets ``strategies`` and
``clients``: one ServerApp and one ClientApp serve every algorithm listed here,
selected by the run-config key ``algorithm``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.client import NumPyClient
from flwr.serverapp.strategy import FedAvg, Strategy
from torch import nn

from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.clients import CSEFSLClient, FedAvgClient, FSLSageClient, SplitFedClient
from fsl_sage_flwr.core.devices import resolve_device
from fsl_sage_flwr.core.memory import state_nbytes
from fsl_sage_flwr.core.models import SplitModel, build_full_model, build_split_model
from fsl_sage_flwr.core.training import evaluate_classifier
from fsl_sage_flwr.data import DatasetSplits
from fsl_sage_flwr.strategies import FSLSage
from fsl_sage_flwr.strategies.cse_fsl import CSEFSL
from fsl_sage_flwr.strategies.guarded_fedavg import GuardedFedAvg
from fsl_sage_flwr.strategies.splitfed import SplitFed
from fsl_sage_flwr.strategies.upload_training import UploadTrainingServer
from fsl_sage_flwr.transport.ledger import ByteLedger
from fsl_sage_flwr.transport.metrics import TrainMetricsTap
from fsl_sage_flwr.transport.update_guard import UpdateLimits


@dataclass
class ServerSetup:
    """What the ServerApp needs to run one algorithm."""

    strategy: Strategy
    initial_arrays: ArrayRecord
    evaluate: Callable[[int, ArrayRecord], MetricRecord | None]
    server_memory_bytes: Callable[[], int]
    final_models: Callable[[ArrayRecord], dict[str, dict[str, torch.Tensor]]]
    round_details: Callable[[], dict[str, float]] = dict
    """Extra figures for the results row of the round just evaluated."""
    #: the server's state beyond the global arrays, for checkpoints (plain tensors and dicts)
    state_dict: Callable[[], dict[str, Any]] = field(default=lambda: {})
    load_state_dict: Callable[[dict[str, Any]], None] = field(default=lambda state: None)
    #: called once a checkpoint holding ``state_dict()`` is on disk
    checkpoint_saved: Callable[[], None] = field(default=lambda: None)


@dataclass(frozen=True)
class Algorithm:
    """One registered algorithm: its server builder and its client class."""

    name: str
    description: str
    #: ``build_server(settings, data, tap, state_dir=None, ledger=None)``; ``state_dir`` is a
    #: folder the server may keep per-client state in, ``ledger`` the run's byte ledger,
    #: for bytes that travel outside the grid (SplitFed-MS's fed server)
    build_server: Callable[..., ServerSetup]
    client_class: type[NumPyClient] | type[SplitFedClient]
    client_parts: tuple[str, ...]
    """The split model's parts a client of this algorithm holds."""


def build_split(settings: RunSettings, data: DatasetSplits) -> SplitModel:
    """Build the run's split model for ``data``."""
    return build_split_model(
        settings.model, num_classes=data.num_classes, input_shape=data.input_shape, aux_variant=settings.aux_variant
    )


def _split_kwargs(settings: RunSettings, data: DatasetSplits, split: SplitModel, tap: TrainMetricsTap) -> dict:
    return {
        "client_model": split.client,
        "server_model": split.server,
        "cut_shape": split.cut_shape,
        "num_classes": data.num_classes,
        "training": settings.training,
        "max_examples": len(data.train),
        "max_rounds_without_replies": settings.max_rounds_without_replies,
        "node_wait_timeout": settings.node_wait_timeout,
        "device": resolve_device(settings.device),
        "testset": data.test,
        "fraction_train": settings.fraction_train,
        "min_train_nodes": settings.min_train_nodes,
        "min_available_nodes": settings.min_available_nodes,
        "train_metrics_aggr_fn": tap,
        "update_limits": UpdateLimits(factor=settings.update_norm_factor),
        "aggregation": settings.aggregation,
    }


def _split_setup(strategy: UploadTrainingServer, split: SplitModel) -> ServerSetup:
    def final_models(arrays: ArrayRecord) -> dict[str, dict[str, torch.Tensor]]:
        strategy.shared_model.load_state_dict(arrays.to_torch_state_dict())
        return {"client_model": _on_cpu(split.client), "server_model": _on_cpu(split.server)}

    return ServerSetup(
        strategy=strategy,
        initial_arrays=strategy.initial_arrays(),
        evaluate=strategy.evaluate_global,
        server_memory_bytes=strategy.server_memory_bytes,
        final_models=final_models,
        state_dict=strategy.state_dict,
        load_state_dict=strategy.load_state_dict,
        checkpoint_saved=strategy.checkpoint_saved,
    )


def _fsl_sage_server(
    settings: RunSettings,
    data: DatasetSplits,
    tap: TrainMetricsTap,
    state_dir: Path | None = None,
    ledger: ByteLedger | None = None,
) -> ServerSetup:
    split = build_split(settings, data)
    strategy = FSLSage(
        shared_model=split.client,
        aux_factory=lambda: build_split(settings, data).aux,
        alignment=settings.alignment,
        warm_up_attempts=settings.warm_up_attempts,
        state_dir=state_dir,
        max_cached_clients=settings.max_cached_clients,
        server_order=settings.server_order,
        fidelity_samples=settings.fidelity_samples,
        **_split_kwargs(settings, data, split, tap),
    )
    setup = _split_setup(strategy, split)
    setup.round_details = strategy.pop_alignment_summary
    return setup


def _cse_fsl_server(
    settings: RunSettings,
    data: DatasetSplits,
    tap: TrainMetricsTap,
    state_dir: Path | None = None,
    ledger: ByteLedger | None = None,
) -> ServerSetup:
    split = build_split(settings, data)
    shared = nn.ModuleDict({"client": split.client, "aux": split.aux})
    strategy = CSEFSL(
        shared_model=shared, server_order=settings.server_order, **_split_kwargs(settings, data, split, tap)
    )
    return _split_setup(strategy, split)


def _fedavg_server(
    settings: RunSettings,
    data: DatasetSplits,
    tap: TrainMetricsTap,
    state_dir: Path | None = None,
    ledger: ByteLedger | None = None,
) -> ServerSetup:
    full = build_full_model(build_split(settings, data))
    # Flower's own FedAvg, with the client-model checks of the split strategies;
    # with the checks off and the plain mean, Flower's class itself.
    guarded = settings.update_norm_factor > 0 or settings.aggregation != "mean"
    checks = {"update_limits": UpdateLimits(factor=settings.update_norm_factor), "aggregation": settings.aggregation}
    strategy = (GuardedFedAvg if guarded else FedAvg)(
        **(checks if guarded else {}),
        fraction_train=settings.fraction_train,
        fraction_evaluate=0.0,
        min_train_nodes=settings.min_train_nodes,
        min_evaluate_nodes=0,
        min_available_nodes=settings.min_available_nodes,
        train_metrics_aggr_fn=tap,
    )
    device = resolve_device(settings.device)
    full.to(device)
    x, y = torch.from_numpy(data.test.images).to(device), torch.from_numpy(data.test.labels).to(device)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        full.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate_classifier(full, x, y)
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    def final_models(arrays: ArrayRecord) -> dict[str, dict[str, torch.Tensor]]:
        full.load_state_dict(arrays.to_torch_state_dict())
        return {"full_model": _on_cpu(full)}

    return ServerSetup(
        strategy=strategy,
        initial_arrays=ArrayRecord(full.state_dict()),
        evaluate=evaluate,
        server_memory_bytes=lambda: state_nbytes(full),
        final_models=final_models,
        **({"state_dict": strategy.state_dict, "load_state_dict": strategy.load_state_dict} if guarded else {}),
    )


def _splitfed_server(mode: str) -> Callable[..., ServerSetup]:
    def build(
        settings: RunSettings,
        data: DatasetSplits,
        tap: TrainMetricsTap,
        state_dir: Path | None = None,
        ledger: ByteLedger | None = None,
    ) -> ServerSetup:
        split = build_split(settings, data)
        strategy = SplitFed(
            mode=mode,
            batch_size=settings.training.batch_size,
            ledger=ledger,
            **_split_kwargs(settings, data, split, tap),
        )
        return _split_setup(strategy, split)

    return build


def _on_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict on the CPU, to save in a file that loads anywhere."""
    return {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("fsl-sage", "FSL-SAGE (Nair et al., ICML 2025)", _fsl_sage_server, FSLSageClient, ("client", "aux")),
        Algorithm("cse-fsl", "CSE-FSL (Mu and Shen)", _cse_fsl_server, CSEFSLClient, ("client", "aux")),
        Algorithm("fedavg", "Flower's FedAvg on the full model", _fedavg_server, FedAvgClient, ("client", "server")),
        Algorithm("splitfed-ms", "SplitFed-MS (SFL-V1)", _splitfed_server("ms"), SplitFedClient, ("client",)),
        Algorithm("splitfed-ss", "SplitFed-SS (SFL-V2)", _splitfed_server("ss"), SplitFedClient, ("client",)),
    )
}


def get_algorithm(name: str) -> Algorithm:
    """Return the registered algorithm ``name`` or raise a ValueError listing them."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{name}'; registered: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]
