"""A train request, server to client: built by the strategy, named again by the client.

FSL-SAGE and CSE-FSL speak Flower's own ``fit`` layout, the one a ``NumPyClient``
reads and writes, so the same client serves a ``ClientApp(client_fn=...)``, the
handlers of :func:`fsl_sage_flwr.register_client` and a legacy server alike.
:class:`TrainRequest` is the named record on the client's side.

Request, server to client (message type ``train``):

- ``"fitins.parameters"`` (ArrayRecord): the shared model's state-dict arrays in
  state-dict order, then, when the config says ``aux-included``, the client's
  auxiliary model's (FSL-SAGE only; the server aligned it since it last sent it).
- ``"fitins.config"`` (ConfigRecord): ``server-round``, ``warmup`` (FSL-SAGE's
  exchange before round 1: reply with one batch of activations, train nothing),
  ``aux-included``, the :class:`~fsl_sage_flwr.transport.local_training.LocalTraining`
  settings the client must obey and, when any is on, the
  :class:`~fsl_sage_flwr.transport.upload_privacy.UploadPrivacy` settings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fsl_sage_flwr.transport.keys import (
    AUX_INCLUDED_KEY,
    AUX_PREFIX,
    REQUEST_ARRAYS_KEY,
    REQUEST_CONFIG_KEY,
    SERVER_ROUND_KEY,
    WARMUP_KEY,
)
from fsl_sage_flwr.transport.local_training import LocalTraining
from fsl_sage_flwr.transport.upload_privacy import UploadPrivacy


@dataclass(frozen=True)
class TrainRequest:
    """A train request as a client reads it: named arrays and settings."""

    server_round: int
    training: LocalTraining
    warmup: bool
    shared: dict[str, np.ndarray]
    aux: dict[str, np.ndarray] | None
    privacy: UploadPrivacy = field(default_factory=UploadPrivacy)


def request_content(
    shared: ArrayRecord,
    *,
    server_round: int,
    training: LocalTraining,
    aux: ArrayRecord | None = None,
    warmup: bool = False,
    privacy: UploadPrivacy | None = None,
) -> RecordDict:
    """Build a train request in Flower's ``fit`` layout (see the module docstring)."""
    arrays = {name: shared[name] for name in shared.keys()}
    if aux is not None:
        arrays.update({AUX_PREFIX + name: aux[name] for name in aux.keys()})
    config = {
        **training.to_config(),
        **(privacy.to_config() if privacy is not None else {}),
        SERVER_ROUND_KEY: server_round,
        WARMUP_KEY: warmup,
        AUX_INCLUDED_KEY: aux is not None,
    }
    return RecordDict({REQUEST_ARRAYS_KEY: ArrayRecord(array_dict=arrays), REQUEST_CONFIG_KEY: ConfigRecord(config)})


def decode_request(
    parameters: Sequence[np.ndarray],
    config: Mapping[str, Any],
    *,
    shared_keys: Sequence[str],
    aux_keys: Sequence[str] = (),
) -> TrainRequest:
    """Name the flat arrays a NumPyClient receives; raise ValueError on a mismatch."""
    aux_included = bool(config.get(AUX_INCLUDED_KEY, False))
    expected = len(shared_keys) + (len(aux_keys) if aux_included else 0)
    if len(parameters) != expected:
        raise ValueError(
            f"request carries {len(parameters)} arrays, expected {expected} "
            f"({len(shared_keys)} of the shared model{' and the auxiliary model' if aux_included else ''})"
        )
    shared = dict(zip(shared_keys, parameters[: len(shared_keys)]))
    aux = dict(zip(aux_keys, parameters[len(shared_keys) :])) if aux_included else None
    if SERVER_ROUND_KEY not in config:
        raise ValueError(f"train config lacks '{SERVER_ROUND_KEY}'")
    return TrainRequest(
        server_round=int(config[SERVER_ROUND_KEY]),
        training=LocalTraining.from_config(config),
        warmup=bool(config.get(WARMUP_KEY, False)),
        shared=shared,
        aux=aux,
        privacy=UploadPrivacy.from_config(config),
    )
