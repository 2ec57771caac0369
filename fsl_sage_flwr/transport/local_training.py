"""The local-training settings every client obeys, sent in each train config and read back from it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fsl_sage_flwr.core.devices import AUTOCAST_CHOICES
from fsl_sage_flwr.core.settings import (
    check_types,
    record_config,
    record_from_config,
    require,
    require_at_least,
    require_choice,
    require_non_negative,
    require_positive,
    setting,
)
from fsl_sage_flwr.transport.compression import UPLOAD_DTYPES


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

    batch_size: int = setting("batch-size", 16, "local minibatch size B (at least 2: BatchNorm needs two samples)")
    local_epochs: int = setting("local-epochs", 1, "local epochs E per round")
    upload_interval: int = setting("upload-interval", 5, "q: keep (z, y) for upload every q-th local step")
    lr: float = setting("lr", 1e-3, "Adam learning rate of client and server models")
    weight_decay: float = setting("weight-decay", 1e-4, "Adam weight decay")
    keep_optimizer_state: bool = setting("keep-optimizer-state", False, "keep client Adam state across rounds")
    seed: int = setting("seed", 0, "seed of data split, models, batches and sampling")
    upload_dtype: str = setting(
        "upload-dtype",
        "float32",
        "FSL-SAGE/CSE-FSL: encoding of uploaded activations: float32, float16, bfloat16, int8",
    )
    autocast: str = setting("autocast", "off", "precision of training forward passes: off or bfloat16")

    def __post_init__(self) -> None:
        check_types(self)
        require(self.batch_size >= 2, self, "batch_size", ">= 2 (BatchNorm needs two samples)")
        require_at_least(self, 1, "local_epochs", "upload_interval")
        require_at_least(self, 0, "seed")
        require_positive(self, "lr")
        require_non_negative(self, "weight_decay")
        require_choice(self, "upload_dtype", UPLOAD_DTYPES)
        require_choice(self, "autocast", AUTOCAST_CHOICES)

    def to_config(self) -> dict[str, bool | int | float | str]:
        """Return the settings as train-config entries."""
        return record_config(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LocalTraining:
        """Read the settings a strategy sent; raise ValueError naming a missing or bad key."""
        return record_from_config(
            cls,
            config,
            origin="train config",
            hint=": serve this client with a strategy of fsl_sage_flwr, which sends the local-training settings "
            "every round",
        )

    def max_uploaded(self, num_examples: int) -> int:
        """The most samples a client of ``num_examples`` can upload in one round."""
        steps = self.local_epochs * math.ceil(num_examples / self.batch_size)
        return math.ceil(steps / self.upload_interval) * self.batch_size
