"""A node's answers to train requests, for any algorithm's client, and the ClientApp handlers that give them.

FSL-SAGE and CSE-FSL clients are NumPyClients answered exactly as
``ClientApp(client_fn=...)`` answers them; the FedAvg client answers Flower's
Message-API FedAvg; the SplitFed client answers per-batch step messages. The
records are specified in ``fsl_sage_flwr.transport.requests``,
``fsl_sage_flwr.transport.replies`` and ``fsl_sage_flwr.transport.splitfed_step``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.client import NumPyClient
from flwr.clientapp import ClientApp
from flwr.compat.common.recorddict_compat import fitres_to_recorddict, recorddict_to_fitins

from fsl_sage_flwr.clients import FedAvgClient, SplitFedClient
from fsl_sage_flwr.transport.keys import (
    ARRAYS_KEY,
    CONFIG_KEY,
    GRAD_KEY,
    METRICS_KEY,
    NUM_EXAMPLES_KEY,
    SMASHED_KEY,
    SPLIT_STEP_ACTION,
)
from fsl_sage_flwr.transport.splitfed_step import smashed_arrays_record


def numpy_client_reply(client: NumPyClient, msg: Message) -> Message:
    """Run ``client.fit`` on a train request and wrap its result as Flower does."""
    fit_ins = recorddict_to_fitins(msg.content, keep_input=True)
    fit_res = client.to_client().fit(fit_ins)
    return Message(content=fitres_to_recorddict(fit_res, keep_input=False), reply_to=msg)


def fedavg_reply(client: FedAvgClient, msg: Message) -> Message:
    """Answer Flower's Message-API FedAvg: named arrays in, named arrays and metrics out."""
    arrays = msg.content.array_records[ARRAYS_KEY]
    parameters, num_examples, metrics = client.fit(
        arrays.to_numpy_ndarrays(), dict(msg.content.config_records[CONFIG_KEY])
    )
    keys = list(client.shared_model.state_dict())
    reply = RecordDict(
        {
            ARRAYS_KEY: ArrayRecord({k: torch.from_numpy(a) for k, a in zip(keys, parameters)}),
            METRICS_KEY: MetricRecord({**metrics, NUM_EXAMPLES_KEY: num_examples}),
        }
    )
    return Message(content=reply, reply_to=msg)


def train_reply(client: Any, msg: Message) -> Message:
    """Answer a ``train`` request with any algorithm's client.

    Raises
    ------
    ValueError
        For a SplitFed client, which trains through per-batch step messages.
    """
    if isinstance(client, SplitFedClient):
        raise ValueError(f"SplitFed trains through per-batch '{SPLIT_STEP_ACTION}' messages, not 'train'")
    if isinstance(client, FedAvgClient):
        return fedavg_reply(client, msg)
    return numpy_client_reply(client, msg)


def split_step_reply(client: Any, msg: Message) -> Message:
    """SplitFed: apply the previous batch's gradient, send the next batch's activations.

    Raises
    ------
    ValueError
        For a client of another algorithm: per-batch steps are part of SplitFed only.
    """
    if not isinstance(client, SplitFedClient):
        raise ValueError(f"per-batch steps are part of SplitFed, not of {type(client).__name__}")
    config = dict(msg.content.config_records[CONFIG_KEY])
    model = msg.content.array_records.get(ARRAYS_KEY)
    grad = msg.content.array_records.get(GRAD_KEY)
    state, smashed, metrics = client.step(
        config,
        model.to_numpy_ndarrays() if model is not None else None,
        grad["grad"].numpy() if grad is not None else None,
    )
    reply = RecordDict({METRICS_KEY: MetricRecord(metrics)})
    if state is not None:
        reply[ARRAYS_KEY] = ArrayRecord(state)
    else:
        reply[SMASHED_KEY] = smashed_arrays_record(*smashed)
    return Message(content=reply, reply_to=msg)


def register_client(app: ClientApp, client_fn: Callable[[Context], NumPyClient]) -> None:
    """Register the train handler that serves ``client_fn``'s NumPyClient on ``app``.

    The handler speaks the same records as ``ClientApp(client_fn=...)``, so
    either way of serving a client gives the same results.
    """

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return numpy_client_reply(client_fn(context), msg)


def register_split_client(app: ClientApp, client_fn: Callable[[Context], Any]) -> None:
    """Register the handlers that serve ``client_fn``'s client, of any algorithm, on ``app``.

    ``train`` serves FSL-SAGE, CSE-FSL and FedAvg clients; the per-batch step
    action serves SplitFed's.
    """

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        return train_reply(client_fn(context), msg)

    @app.train(SPLIT_STEP_ACTION)
    def split_step(msg: Message, context: Context) -> Message:
        return split_step_reply(client_fn(context), msg)
