"""The local-training settings every client obeys, sent in each train config and read back from it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fsl_sage_flwr.core.devices import AUTOCAST_CHOICES
from fsl_sage_flwr.transport.compression import upload_encoding


def _setting(key: str, default: Any) -> Any:
    return field(default=default, metadata={"key": key})


@dataclass(frozen=True)
class LocalTraining:
    """The local-training settings every client must obey.

    The strategy holds them, sends them in every train config and bounds each
    reply by them, so a client never trains with other values than the server
    checks against. These defaults are the app's (``RunSettings`` takes them,
    ``pyproject.toml`` repeats them): B = 16 for the small digits set (the paper,
    Nair et al., ICML 2025, uses 256), E = 1, q = 5, Adam with learning rate
    1e-3 and weight decay 1e-4.

    Attributes
    ----------
    batch_size : int
        Local minibatch size B (at least 2: BatchNorm needs two samples).
    local_epochs : int
        Local epochs E per round.
    upload_interval : int
        q: keep ``(z, y)`` for upload every q-th local step.
    lr, weight_decay : float
        Adam settings of the client models (and of the server model).
    keep_optimizer_state : bool
        Clients keep their Adam state across rounds in ``Context.state``.
    seed : int
        Seeds the clients' batches and initialisation (with round and partition).
    upload_dtype : str
        Encoding of the uploaded activations: ``float32`` (the paper), ``float16``,
        ``bfloat16`` or ``int8`` with a per-channel scale
        (:mod:`fsl_sage_flwr.transport.compression`).
    autocast : str
        ``off`` (float32) or ``bfloat16``: the precision of training forward
        passes, on clients and server alike (:func:`fsl_sage_flwr.core.devices.autocast`).
    """

    batch_size: int = _setting("batch-size", 16)
    local_epochs: int = _setting("local-epochs", 1)
    upload_interval: int = _setting("upload-interval", 5)
    lr: float = _setting("lr", 1e-3)
    weight_decay: float = _setting("weight-decay", 1e-4)
    keep_optimizer_state: bool = _setting("keep-optimizer-state", False)
    seed: int = _setting("seed", 0)
    upload_dtype: str = _setting("upload-dtype", "float32")
    autocast: str = _setting("autocast", "off")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_setting(f.metadata["key"], getattr(self, f.name), f.type)
        if self.batch_size < 2:
            raise ValueError(f"'batch-size' must be >= 2 (BatchNorm needs two samples), got {self.batch_size}")
        for key in ("local-epochs", "upload-interval"):
            if self.to_config()[key] < 1:
                raise ValueError(f"'{key}' must be >= 1, got {self.to_config()[key]}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"'lr' must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"'weight-decay' must be a finite number >= 0, got {self.weight_decay}")
        if self.seed < 0:
            raise ValueError(f"'seed' must be >= 0, got {self.seed}")
        upload_encoding(self.upload_dtype)
        if self.autocast not in AUTOCAST_CHOICES:
            raise ValueError(f"'autocast' must be one of {list(AUTOCAST_CHOICES)}, got {self.autocast!r}")

    def to_config(self) -> dict[str, bool | int | float | str]:
        """Return the settings as train-config entries."""
        return {f.metadata["key"]: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LocalTraining:
        """Read the settings a strategy sent; raise ValueError naming a missing or bad key."""
        values = {}
        for f in dataclasses.fields(cls):
            key = f.metadata["key"]
            if key not in config:
                raise ValueError(
                    f"train config lacks '{key}': serve this client with a strategy of "
                    "fsl_sage_flwr, which sends the local-training settings every round"
                )
            value = config[key]
            values[f.name] = (
                float(value) if f.type == "float" and isinstance(value, int) and not isinstance(value, bool) else value
            )
        return cls(**values)

    def max_uploaded(self, num_examples: int) -> int:
        """The most samples a client of ``num_examples`` can upload in one round."""
        steps = self.local_epochs * math.ceil(num_examples / self.batch_size)
        return math.ceil(steps / self.upload_interval) * self.batch_size


def _check_setting(key: str, value: Any, type_name: str) -> None:
    expected = {"int": int, "float": float, "bool": bool, "str": str}[type_name]
    if isinstance(value, bool) != (expected is bool) or not isinstance(value, expected):
        raise ValueError(f"'{key}' must be {type_name}, got {value!r}")
