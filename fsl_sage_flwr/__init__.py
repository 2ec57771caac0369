"""FSL-SAGE federated split learning for Flower: the public API."""

from __future__ import annotations

from typing import Any

# Imported on first use, so that the core modules load without Flower's strategy
# and client machinery (and without import cycles through this package).
_PUBLIC = {
    "SplitSpec": "fsl_sage_flwr.plugin",
    "as_dataset": "fsl_sage_flwr.plugin",
    "register_client": "fsl_sage_flwr.plugin",
    "builtin_spec": "fsl_sage_flwr.specs",
    "load_trained_model": "fsl_sage_flwr.trained",
    "split_strategy": "fsl_sage_flwr.split_algorithms",
    "ALGORITHM_NAMES": "fsl_sage_flwr.split_algorithms",
    "ByteMeter": "fsl_sage_flwr.metering",
    "RoundBytes": "fsl_sage_flwr.metering",
    "LocalTraining": "fsl_sage_flwr.transport.local_training",
    "AlignmentSettings": "fsl_sage_flwr.core.alignment",
    "choose_aux_variant": "fsl_sage_flwr.core.aux_sizing",
    "FSLSage": "fsl_sage_flwr.strategies.fsl_sage",
    "FSLSageLegacy": "fsl_sage_flwr.strategies.legacy",
    "FSLSageClient": "fsl_sage_flwr.clients.fsl_sage",
    "ArrayDataset": "fsl_sage_flwr.data",
    "SetupError": "fsl_sage_flwr.core.setup_checks",
    "SetupDropError": "fsl_sage_flwr.strategies.setup_drops",
    "SplitLoss": "fsl_sage_flwr.core.losses",
    "Metric": "fsl_sage_flwr.core.losses",
    "LabelSpec": "fsl_sage_flwr.core.losses",
    "CROSS_ENTROPY": "fsl_sage_flwr.core.losses",
    "ACCURACY": "fsl_sage_flwr.core.losses",
    "token_cross_entropy": "fsl_sage_flwr.core.losses",
    "perplexity": "fsl_sage_flwr.core.losses",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'fsl_sage_flwr' has no attribute '{name}'")
    import importlib

    return getattr(importlib.import_module(_PUBLIC[name]), name)
