"""Registry of algorithms: how each one's server is built from the run config and the run's split network.

With the two app entry modules, this is where the app meets ``strategies`` and
``clients``: one ServerApp and one ClientApp serve every algorithm listed here,
selected by the run-config key ``algorithm``, for a built-in model and a user's
own SplitSpec alike (``fsl_sage_flwr.app.run_split``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import Strategy
from torch import nn

from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.app.run_split import RunSplit
from fsl_sage_flwr.core.devices import resolve_device
from fsl_sage_flwr.split_algorithms import CLIENT_CLASSES, CLIENT_PARTS, split_strategy
from fsl_sage_flwr.strategies.joined_fedavg import JoinedFedAvg
from fsl_sage_flwr.strategies.model_privacy import ModelPrivacy
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
    model_privacy: ModelPrivacy | None = None
    """The client-model average's differential privacy; each row then reports its epsilon."""
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
    #: ``build_server(settings, run_split, tap, state_dir=None, ledger=None)``; ``state_dir`` is a
    #: folder the server may keep per-client state in, ``ledger`` the run's byte ledger,
    #: for bytes that travel outside the grid (SplitFed-MS's fed server)
    build_server: Callable[..., ServerSetup]
    client_class: type
    client_parts: tuple[str, ...]
    """The split model's parts a client of this algorithm holds."""


def _common_kwargs(settings: RunSettings, tap: TrainMetricsTap) -> dict[str, Any]:
    """The keywords every algorithm's strategy takes from the run config."""
    return {
        "device": resolve_device(settings.device),
        "fraction_train": settings.fraction_train,
        "min_train_nodes": settings.min_train_nodes,
        "min_available_nodes": settings.min_available_nodes,
        "train_metrics_aggr_fn": tap,
        "allow_partial_federation": settings.allow_partial_federation,
        "update_limits": UpdateLimits(factor=settings.update_norm_factor),
        "aggregation": settings.aggregation,
        "model_privacy": settings.model_privacy,
    }


def _split_kwargs(settings: RunSettings, run_split: RunSplit, tap: TrainMetricsTap) -> dict[str, Any]:
    """The keywords every split strategy takes from the run config."""
    return {
        **_common_kwargs(settings, tap),
        "max_examples": run_split.max_examples,
        "max_rounds_without_replies": settings.max_rounds_without_replies,
        "node_wait_timeout": settings.node_wait_timeout,
    }


def _strategy(settings: RunSettings, run_split: RunSplit, **kwargs: Any) -> tuple[Strategy, nn.Module, nn.Module]:
    """Build the run's strategy on freshly built parts; return it with the client and server parts."""
    spec = run_split.spec
    split = spec.build()
    strategy = split_strategy(
        settings.algorithm,
        split,
        num_classes=spec.num_classes,
        training=settings.training,
        testset=run_split.testset,
        **kwargs,
    )
    return strategy, split.client, split.server


def _split_setup(strategy: UploadTrainingServer | SplitFed, client: nn.Module, server: nn.Module) -> ServerSetup:
    def final_models(arrays: ArrayRecord) -> dict[str, dict[str, torch.Tensor]]:
        strategy.shared_model.load_state_dict(arrays.to_torch_state_dict())
        return {"client_model": _on_cpu(client), "server_model": _on_cpu(server)}

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
    run_split: RunSplit,
    tap: TrainMetricsTap,
    state_dir: Path | None = None,
    ledger: ByteLedger | None = None,
) -> ServerSetup:
    strategy, client, server = _strategy(
        settings,
        run_split,
        # A whole fresh build per aux: a seeded run draws the same numbers as it always has.
        aux_factory=lambda: run_split.spec.build().aux,
        alignment=settings.alignment,
        warm_up_attempts=settings.warm_up_attempts,
        warm_up=settings.warm_up,
        state_dir=state_dir,
        max_cached_clients=settings.max_cached_clients,
        server_order=settings.server_order,
        fidelity_samples=settings.fidelity_samples,
        **_split_kwargs(settings, run_split, tap),
    )
    setup = _split_setup(strategy, client, server)
    setup.round_details = strategy.pop_alignment_summary
    return setup


def _cse_fsl_server(
    settings: RunSettings,
    run_split: RunSplit,
    tap: TrainMetricsTap,
    state_dir: Path | None = None,
    ledger: ByteLedger | None = None,
) -> ServerSetup:
    strategy, client, server = _strategy(
        settings, run_split, server_order=settings.server_order, **_split_kwargs(settings, run_split, tap)
    )
    return _split_setup(strategy, client, server)


def _splitfed_server(
    settings: RunSettings,
    run_split: RunSplit,
    tap: TrainMetricsTap,
    state_dir: Path | None = None,
    ledger: ByteLedger | None = None,
) -> ServerSetup:
    strategy, client, server = _strategy(settings, run_split, ledger=ledger, **_split_kwargs(settings, run_split, tap))
    return _split_setup(strategy, client, server)


def _fedavg_server(
    settings: RunSettings,
    run_split: RunSplit,
    tap: TrainMetricsTap,
    state_dir: Path | None = None,
    ledger: ByteLedger | None = None,
) -> ServerSetup:
    # Flower's own FedAvg rounds and average, with the split strategies' update bounds and record of drops.
    strategy, _, _ = _strategy(settings, run_split, **_common_kwargs(settings, tap))
    strategy = cast(JoinedFedAvg, strategy)

    def final_models(arrays: ArrayRecord) -> dict[str, dict[str, torch.Tensor]]:
        strategy.full_model.load_state_dict(arrays.to_torch_state_dict())
        return {"full_model": _on_cpu(strategy.full_model)}

    return ServerSetup(
        strategy=strategy,
        initial_arrays=strategy.initial_arrays(),
        evaluate=strategy.evaluate_global,
        server_memory_bytes=strategy.server_memory_bytes,
        final_models=final_models,
        state_dict=strategy.state_dict,
        load_state_dict=strategy.load_state_dict,
    )


def _on_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    """A module's state dict on the CPU, to save in a file that loads anywhere."""
    return {name: tensor.detach().cpu() for name, tensor in module.state_dict().items()}


_DESCRIPTIONS = {
    "fsl-sage": ("FSL-SAGE (Nair et al., ICML 2025)", _fsl_sage_server),
    "cse-fsl": ("CSE-FSL (Mu and Shen)", _cse_fsl_server),
    "fedavg": ("Flower's FedAvg on the full model", _fedavg_server),
    "splitfed-ms": ("SplitFed-MS (SFL-V1)", _splitfed_server),
    "splitfed-ss": ("SplitFed-SS (SFL-V2)", _splitfed_server),
}

ALGORITHMS: dict[str, Algorithm] = {
    name: Algorithm(name, description, build, CLIENT_CLASSES[name], CLIENT_PARTS[name])
    for name, (description, build) in _DESCRIPTIONS.items()
}


def get_algorithm(name: str) -> Algorithm:
    """Return the registered algorithm ``name`` or raise a ValueError listing them."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{name}'; registered: {', '.join(ALGORITHMS)}")
    return ALGORITHMS[name]
