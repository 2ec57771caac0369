"""Flower ClientApp entry: serves the run's algorithm on this node's data.

FSL-SAGE and CSE-FSL clients are NumPyClients served exactly as
``ClientApp(client_fn=...)`` would serve them (``fsl_sage_flwr.plugin``); the
FedAvg client answers Flower's Message-API FedAvg; SplitFed has its per-batch
handler. The records are specified in ``fsl_sage_flwr.transport.requests``,
``fsl_sage_flwr.transport.replies`` and ``fsl_sage_flwr.transport.splitfed_step``.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fsl_sage_flwr.app.algorithms import get_algorithm
from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.app.node_data import load_node_data
from fsl_sage_flwr.clients import FedAvgClient, SplitFedClient
from fsl_sage_flwr.clients.setup_checks import check_node_data, node_partition_id
from fsl_sage_flwr.core.devices import resolve_device
from fsl_sage_flwr.core.models import SplitModel, build_split_model, required_input_shape
from fsl_sage_flwr.data import load_dataset_cached
from fsl_sage_flwr.plugin import numpy_client_reply
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

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Run one local round (or FSL-SAGE's warm-up) of the run's algorithm."""
    client, settings = build_client(context)
    if isinstance(client, SplitFedClient):
        raise ValueError(f"'{settings.algorithm}' trains through per-batch '{SPLIT_STEP_ACTION}' messages")
    if isinstance(client, FedAvgClient):
        return _fedavg_reply(client, msg)
    return numpy_client_reply(client, msg)


def _fedavg_reply(client: FedAvgClient, msg: Message) -> Message:
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


@app.train(SPLIT_STEP_ACTION)
def split_step(msg: Message, context: Context) -> Message:
    """SplitFed: apply the previous batch's gradient, send the next batch's activations."""
    client, settings = build_client(context)
    if not isinstance(client, SplitFedClient):
        raise ValueError(f"per-batch steps are part of SplitFed, not of '{settings.algorithm}'")
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


def build_client(context: Context) -> tuple[Any, RunSettings]:
    """Build the client of the run's algorithm for the node in ``context``; return it and the settings."""
    settings = RunSettings.from_run_config(context.run_config)
    torch.set_num_threads(settings.client_threads)
    partition_id = node_partition_id(context.node_config)
    data_args = {
        "data_dir": settings.data_dir or None,
        "input_shape": required_input_shape(settings.model),
        "train_subset": settings.train_subset or None,
        "seed": settings.training.seed,
    }
    trainset = load_node_data(context.node_config, settings)
    data = load_dataset_cached(settings.dataset, **data_args)
    algorithm = get_algorithm(settings.algorithm)
    split = _client_split(
        settings.model, settings.aux_variant, data.num_classes, data.input_shape, algorithm.client_parts
    )
    # Checked on every load of the node's data, before training: a wrong setup fails in one line.
    check_node_data(split, trainset, data.num_classes)
    device = resolve_device(settings.device)
    return algorithm.client_class(split, trainset, partition_id, context.state, device), settings


@functools.lru_cache(maxsize=4)
def _client_split(
    model: str, aux_variant: str, num_classes: int, input_shape: tuple[int, ...], parts: tuple[str, ...]
) -> SplitModel:
    """The parts a client holds, built once per process for a run's settings.

    Every message loads the models' whole state (weights and BatchNorm buffers)
    from the request or from ``Context.state`` before it trains, so reusing the
    modules carries nothing from one node or round to the next.
    """
    return build_split_model(
        model, num_classes=num_classes, input_shape=input_shape, aux_variant=aux_variant, parts=parts
    )
