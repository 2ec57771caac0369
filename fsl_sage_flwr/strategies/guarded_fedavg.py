"""Flower's FedAvg with the split strategies' client-model checks: update bounds and a chosen average."""

from __future__ import annotations

import math
from collections.abc import Iterable
from logging import WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fsl_sage_flwr.strategies.model_privacy import ModelPrivacy
from fsl_sage_flwr.strategies.robust_average import AGGREGATIONS, aggregate
from fsl_sage_flwr.transport.arrays import ArraySpec
from fsl_sage_flwr.transport.log_text import client_text
from fsl_sage_flwr.transport.update_guard import UpdateGuard, UpdateLimits


class GuardedFedAvg(FedAvg):
    """FedAvg whose replies must keep their model update within bounds before they are averaged.

    With ``aggregation="mean"`` and no reply refused, the average is Flower's
    own, bit for bit.

    Parameters
    ----------
    update_limits : UpdateLimits, optional
        Bounds on each reply's update (see
        :class:`~fsl_sage_flwr.transport.update_guard.UpdateGuard`).
    aggregation : str
        ``"mean"``, ``"trimmed-mean"`` or ``"median"`` (see
        :func:`~fsl_sage_flwr.strategies.robust_average.aggregate`).
    model_privacy : ModelPrivacy, optional
        Client-level differential privacy of the average (replaces ``aggregation``).
    **kwargs
        As in Flower's FedAvg.
    """

    def __init__(
        self,
        *,
        update_limits: UpdateLimits | None = None,
        aggregation: str = "mean",
        model_privacy: ModelPrivacy | None = None,
        **kwargs: Any,
    ) -> None:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"'aggregation' must be one of {', '.join(AGGREGATIONS)}, got {aggregation!r}")
        super().__init__(**kwargs)
        self.update_guard = UpdateGuard(update_limits or UpdateLimits())
        self.aggregation = aggregation
        self.model_privacy = model_privacy
        self._sent: ArrayRecord | None = None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global arrays (updates are measured from them), then sample as FedAvg does."""
        self._sent = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Drop replies whose arrays do not fit or whose update is out of bounds; average the rest."""
        replies = list(replies)
        if self._sent is None:
            return super().aggregate_train(server_round, replies)
        sent = {name: self._sent[name].numpy() for name in self._sent.keys()}
        candidates = []
        for msg in replies:
            if msg.has_error():
                continue
            reason = _misfit(msg, sent)
            if reason is None:
                candidates.append(msg)
            else:
                _log_dropped(msg, reason)
        screening = self.update_guard.screen(sent, [_arrays(msg, sent) for msg in candidates])
        for msg, reason in zip(candidates, screening.reasons):
            if reason is not None:
                _log_dropped(msg, reason)
        kept = [candidates[i] for i in screening.kept]
        # Error replies go on to FedAvg, which logs them; with nothing refused the list is the one received.
        arrays, metrics = super().aggregate_train(server_round, [m for m in replies if m.has_error()] + kept)
        if arrays is not None:
            self.update_guard.accept(screening)
            if self.aggregation != "mean" or self.model_privacy is not None:
                spec = {name: ArraySpec(tuple(v.shape), str(v.dtype)) for name, v in sent.items()}
                weight_key = self.weighted_by_key
                states = [(_record(m), int(next(iter(m.content.metric_records.values()))[weight_key])) for m in kept]
                if self.model_privacy is not None:
                    arrays = self.model_privacy.average(self._sent, states, spec, server_round)
                else:
                    arrays = aggregate(states, spec, self.aggregation)
        return arrays, metrics

    def state_dict(self) -> dict[str, Any]:
        """The guard's state, for a checkpoint."""
        return {"update_guard": self.update_guard.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; ValueError when the guard's state is missing or wrong."""
        if "update_guard" not in state:
            raise ValueError("server state without 'update_guard': an older checkpoint, which cannot be resumed")
        self.update_guard.load_state_dict(state["update_guard"])


def _record(msg: Message) -> ArrayRecord:
    return next(iter(msg.content.array_records.values()))


def _arrays(msg: Message, sent: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    record = _record(msg)
    return {name: record[name].numpy() for name in sent}


def _misfit(msg: Message, sent: dict[str, np.ndarray]) -> str | None:
    """Why a reply's arrays cannot be compared with the global ones, or None."""
    if len(msg.content.array_records) != 1:
        return "a reply must carry exactly one ArrayRecord"
    record = _record(msg)
    if set(record.keys()) != set(sent):
        return "model arrays differ from the global model's keys"
    for name, values in sent.items():
        # Sizes, not shapes: a 0-d counter may come back as a vector of one.
        if math.prod(record[name].shape) != values.size:
            return f"model array '{name}' holds {math.prod(record[name].shape)} values, the global one {values.size}"
    return None


def _log_dropped(msg: Message, reason: str) -> None:
    log(WARNING, "dropped reply from node %d: %s", msg.metadata.src_node_id, client_text(reason, limit=400))
