"""Run settings: the app's run-config keys, their defaults and their checks."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fsl_sage_flwr.core.alignment import AlignmentSettings
from fsl_sage_flwr.core.devices import AUTOCAST_CHOICES, DEVICE_CHOICES
from fsl_sage_flwr.core.models import SPLIT_MODELS, aux_variants
from fsl_sage_flwr.core.server_order import SERVER_ORDERS
from fsl_sage_flwr.data import DATASETS, PARTITIONINGS
from fsl_sage_flwr.transport.compression import UPLOAD_DTYPES
from fsl_sage_flwr.transport.wire import LocalTraining

#: The defaults of the settings other dataclasses own: local training and alignment.
_TRAINING = LocalTraining()
_ALIGNMENT = AlignmentSettings()


def _key(name: str, help_text: str, default: Any) -> Any:
    return field(default=default, metadata={"key": name, "help": help_text})


@dataclass(frozen=True)
class RunSettings:
    """Every knob a user tunes through ``--run-config``, named as in ``pyproject.toml``.

    The defaults here are the app's only ones: local-training defaults are
    :class:`~fsl_sage_flwr.transport.wire.LocalTraining`'s, alignment defaults
    :class:`~fsl_sage_flwr.core.alignment.AlignmentSettings`', the rest are set
    below, and ``pyproject.toml``'s run config repeats them all (a test keeps
    the two equal). They suit the embedded digits set; where the paper (Nair et
    al., ICML 2025) differs, ``pyproject.toml`` names its value: 200 rounds,
    B = 256, l = 10, 100 alignment epochs.
    """

    algorithm: str = _key("algorithm", "fsl-sage, cse-fsl, fedavg, splitfed-ms or splitfed-ss", "fsl-sage")
    num_server_rounds: int = _key("num-server-rounds", "federated rounds", 20)
    fraction_train: float = _key("fraction-train", "share of nodes trained per round", 1.0)
    min_train_nodes: int = _key("min-train-nodes", "fewest nodes trained per round", 1)
    min_available_nodes: int = _key("min-available-nodes", "nodes to wait for at start", 2)
    local_epochs: int = _key("local-epochs", "local epochs E per round", _TRAINING.local_epochs)
    batch_size: int = _key("batch-size", "local minibatch size B", _TRAINING.batch_size)
    lr: float = _key("lr", "Adam learning rate of client and server models", _TRAINING.lr)
    weight_decay: float = _key("weight-decay", "Adam weight decay", _TRAINING.weight_decay)
    dataset: str = _key("dataset", "digits, mnist, fashion-mnist, cifar10, cifar100", "digits")
    data_dir: str = _key("data-dir", "folder holding the dataset files", "")
    train_subset: int = _key("train-subset", "stratified train subsample size, 0 = all", 0)
    model: str = _key("model", "split model: cnn or resnet18", "cnn")
    aux_variant: str = _key("aux-variant", "auxiliary model: linear, half, default, full", "default")
    partitioning: str = _key("partitioning", "iid or dirichlet", "dirichlet")
    alpha: float = _key("alpha", "Dirichlet concentration", 1.0)
    upload_interval: int = _key("upload-interval", "q: upload (z, y) every q-th local step", _TRAINING.upload_interval)
    upload_dtype: str = _key(
        "upload-dtype",
        "FSL-SAGE/CSE-FSL: encoding of uploaded activations: float32, float16, bfloat16, int8",
        _TRAINING.upload_dtype,
    )
    align_interval: int = _key("align-interval", "l: align auxiliary models every l rounds", _ALIGNMENT.interval)
    align_threshold: float = _key(
        "align-threshold",
        "FSL-SAGE: also align a client whose measured gradient cosine falls under this; 0 = off",
        _ALIGNMENT.threshold,
    )
    align_budget_bytes: int = _key(
        "align-budget-bytes",
        "FSL-SAGE: aux bytes the threshold-triggered alignments may send in a run; 0 = no limit",
        _ALIGNMENT.budget_bytes,
    )
    buffer_size: int = _key("buffer-size", "per-client (z, y) buffer cap in samples", _ALIGNMENT.buffer_size)
    align_epochs: int = _key("align-epochs", "alignment passes over a buffer", _ALIGNMENT.epochs)
    align_batch_size: int = _key("align-batch-size", "alignment minibatch size", _ALIGNMENT.batch_size)
    align_lr: float = _key("align-lr", "Adam learning rate of the alignment", _ALIGNMENT.lr)
    align_patience: int = _key(
        "align-patience", "stop an alignment after this many epochs without gain; 0 = never", _ALIGNMENT.patience
    )
    align_min_improvement: float = _key(
        "align-min-improvement", "relative loss drop an alignment epoch must make", _ALIGNMENT.min_improvement
    )
    align_stacked: bool = _key(
        "align-stacked", "align all due auxiliary models at once (vmapped); same result", _ALIGNMENT.stacked
    )
    keep_optimizer_state: bool = _key(
        "keep-optimizer-state", "keep client Adam state across rounds", _TRAINING.keep_optimizer_state
    )
    fidelity_samples: int = _key(
        "fidelity-samples", "FSL-SAGE: samples per upload on which aux and server gradients are compared; 0 = off", 64
    )
    server_order: str = _key(
        "server-order", "FSL-SAGE/CSE-FSL: server steps on a round's uploads client by client or mixed", "partition"
    )
    client_threads: int = _key("client-threads", "torch threads per client", 1)
    device: str = _key("device", "where models train: auto, cpu, cuda or cuda:N", "auto")
    autocast: str = _key("autocast", "precision of training forward passes: off or bfloat16", _TRAINING.autocast)
    round_timeout: float = _key("round-timeout", "seconds to wait for the replies of one exchange", 3600.0)
    node_wait_timeout: float = _key("node-wait-timeout", "seconds to wait for min-available-nodes at start", 600.0)
    warm_up_attempts: int = _key("warm-up-attempts", "how often a node whose warm-up fails is asked again", 3)
    max_rounds_without_replies: int = _key(
        "max-rounds-without-replies", "stop the run after this many rounds in a row without an accepted reply", 3
    )
    max_cached_clients: int = _key(
        "max-cached-clients", "FSL-SAGE: clients whose server-side state is held in memory; the rest is on disk", 64
    )
    checkpoint_interval: int = _key("checkpoint-interval", "write a checkpoint every this many rounds, 0 = never", 0)
    resume: bool = _key("resume", "continue the run in output-dir/run-name from its checkpoint", False)
    seed: int = _key("seed", "seed of data split, models and sampling", _TRAINING.seed)
    output_dir: str = _key("output-dir", "results folder; relative paths go under $HOME", "fsl-sage-flwr-outputs")
    run_name: str = _key("run-name", "results subfolder; empty = timestamp and algorithm", "")

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> RunSettings:
        """Build settings from Flower's run config, with every key checked.

        Raises
        ------
        ValueError
            Naming the key, when a key is missing, has the wrong type, or is out
            of range.
        """
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f.metadata["key"]
            if key not in run_config:
                raise ValueError(f"run config lacks '{key}' ({f.metadata['help']})")
            values[f.name] = _coerce(key, run_config[key], f.type)
        settings = cls(**values)
        settings._check()
        return settings

    def local_training(self) -> LocalTraining:
        """The settings the strategy sends to every client each round."""
        return LocalTraining(
            batch_size=self.batch_size,
            local_epochs=self.local_epochs,
            upload_interval=self.upload_interval,
            lr=self.lr,
            weight_decay=self.weight_decay,
            keep_optimizer_state=self.keep_optimizer_state,
            seed=self.seed,
            upload_dtype=self.upload_dtype,
            autocast=self.autocast,
        )

    def alignment(self) -> AlignmentSettings:
        """FSL-SAGE's alignment settings."""
        return AlignmentSettings(
            interval=self.align_interval,
            buffer_size=self.buffer_size,
            epochs=self.align_epochs,
            batch_size=self.align_batch_size,
            lr=self.align_lr,
            weight_decay=self.weight_decay,
            seed=self.seed,
            patience=self.align_patience,
            min_improvement=self.align_min_improvement,
            stacked=self.align_stacked,
            threshold=self.align_threshold,
            budget_bytes=self.align_budget_bytes,
        )

    def to_config(self) -> dict[str, Any]:
        """Return the settings as a flat run-config mapping (kebab-case keys)."""
        return {f.metadata["key"]: getattr(self, f.name) for f in dataclasses.fields(self)}

    def _check(self) -> None:
        positive = {
            "num-server-rounds": self.num_server_rounds,
            "local-epochs": self.local_epochs,
            "batch-size": self.batch_size,
            "upload-interval": self.upload_interval,
            "align-interval": self.align_interval,
            "buffer-size": self.buffer_size,
            "align-batch-size": self.align_batch_size,
            "client-threads": self.client_threads,
            "max-rounds-without-replies": self.max_rounds_without_replies,
            "warm-up-attempts": self.warm_up_attempts,
            "min-train-nodes": self.min_train_nodes,
            "min-available-nodes": self.min_available_nodes,
            "max-cached-clients": self.max_cached_clients,
        }
        for key, value in positive.items():
            if value < 1:
                raise ValueError(f"run config '{key}' must be >= 1, got {value}")
        if self.batch_size < 2:
            raise ValueError("run config 'batch-size' must be >= 2 (BatchNorm needs 2 samples)")
        if not 0.0 < self.fraction_train <= 1.0:
            raise ValueError(f"run config 'fraction-train' must be in (0, 1], got {self.fraction_train}")
        positive_reals = {
            "lr": self.lr,
            "align-lr": self.align_lr,
            "alpha": self.alpha,
            "round-timeout": self.round_timeout,
            "node-wait-timeout": self.node_wait_timeout,
        }
        for key, value in positive_reals.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"run config '{key}' must be a finite number > 0, got {value}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"run config 'weight-decay' must be a finite number >= 0, got {self.weight_decay}")
        non_negative = {
            "align-epochs": self.align_epochs,
            "train-subset": self.train_subset,
            "seed": self.seed,
            "align-patience": self.align_patience,
            "checkpoint-interval": self.checkpoint_interval,
            "fidelity-samples": self.fidelity_samples,
            "align-budget-bytes": self.align_budget_bytes,
        }
        if not 0.0 <= self.align_min_improvement < 1.0:
            raise ValueError(f"run config 'align-min-improvement' must be in [0, 1), got {self.align_min_improvement}")
        for key, value in non_negative.items():
            if value < 0:
                raise ValueError(f"run config '{key}' must be >= 0, got {value}")
        if self.min_train_nodes > self.min_available_nodes:
            raise ValueError(
                f"run config 'min-train-nodes' ({self.min_train_nodes}) exceeds "
                f"'min-available-nodes' ({self.min_available_nodes}): no round could be sampled"
            )
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"run config 'device' is {self.device!r}; allowed: {DEVICE_CHOICES}")
        _check_choice("partitioning", self.partitioning, PARTITIONINGS)
        _check_choice("server-order", self.server_order, SERVER_ORDERS)
        _check_choice("upload-dtype", self.upload_dtype, UPLOAD_DTYPES)
        _check_choice("autocast", self.autocast, AUTOCAST_CHOICES)
        if not 0.0 <= self.align_threshold <= 1.0:
            raise ValueError(f"run config 'align-threshold' must be a cosine in [0, 1], got {self.align_threshold}")
        if self.align_threshold > 0 and self.fidelity_samples == 0:
            raise ValueError(
                "run config 'align-threshold' needs the fidelity measurement it acts on: set 'fidelity-samples' > 0"
            )
        _check_choice("dataset", self.dataset, tuple(DATASETS))
        _check_choice("model", self.model, tuple(SPLIT_MODELS))
        _check_choice("aux-variant", self.aux_variant, aux_variants(self.model))

    def check_data(self, num_train: int, num_classes: int) -> None:
        """Check the settings against the loaded training split, before any message.

        Raises
        ------
        ValueError
            When ``train-subset`` holds fewer samples than classes, or the
            ``min-available-nodes`` nodes would get fewer than two samples each.
        """
        if self.train_subset and self.train_subset < num_classes:
            raise ValueError(
                f"run config 'train-subset' ({self.train_subset}) must be 0 (all) or at least the {num_classes} classes"
            )
        if num_train < 2 * self.min_available_nodes:
            raise ValueError(
                f"{num_train} training samples cannot give 'min-available-nodes' "
                f"({self.min_available_nodes}) nodes two samples each"
            )


@dataclass(frozen=True)
class ConfigKey:
    """One run-config key as the reference documents it."""

    key: str
    default: Any
    help: str


def run_config_reference() -> list[ConfigKey]:
    """Every run-config key the app reads, with its default and meaning, in the app's order.

    The documentation's run-config page is generated from this list, so it
    cannot drift from the keys the ServerApp checks.
    """
    return [ConfigKey(f.metadata["key"], f.default, f.metadata["help"]) for f in dataclasses.fields(RunSettings)]


def _check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"run config '{key}' is {value!r}; allowed: {', '.join(allowed)}")


def _coerce(key: str, value: Any, type_name: Any) -> Any:
    """Convert a run-config value to the field's type, refusing lossy guesses."""
    name = type_name if isinstance(type_name, str) else type_name.__name__
    if name == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif name == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif name == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif name == "str":
        if isinstance(value, str):
            return value
    raise ValueError(f"run config '{key}' must be {name}, got {value!r}")
