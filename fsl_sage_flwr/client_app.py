"""Flower ClientApp entry: turns Flower messages into NumPyClient calls and back.

The only place that translates between Flower records and the clients' flat
array lists; the records themselves are specified in ``fsl_sage_flwr.wire``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients import FSLSageClient, SplitFedClient
from fsl_sage_flwr.algorithms import build_split, get_algorithm
from fsl_sage_flwr.config import RunSettings
from fsl_sage_flwr.data import load_dataset_cached
from fsl_sage_flwr.models import required_input_shape
from fsl_sage_flwr.node_data import load_node_data
from fsl_sage_flwr.wire import (
    ARRAYS_KEY,
    AUX_KEY,
    CONFIG_KEY,
    METRICS_KEY,
    GRAD_KEY,
    SMASHED_KEY,
    SPLIT_STEP_ACTION,
    WARMUP_ACTION,
    smashed_arrays_record,
)

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Run one local round of the run's algorithm and reply with its records."""
    client, settings = _build_client(context)
    parameters, config = _request_to_numpy(msg.content, settings)
    arrays, num_examples, metrics = client.fit(parameters, config)
    keys = list(client.shared_model.state_dict())
    reply = RecordDict(
        {
            ARRAYS_KEY: ArrayRecord({k: torch.from_numpy(a) for k, a in zip(keys, arrays)}),
            METRICS_KEY: MetricRecord({**metrics, "num-examples": num_examples}),
        }
    )
    if client.uploads_smashed:
        reply[SMASHED_KEY] = smashed_arrays_record(*arrays[len(keys) :])
    return Message(content=reply, reply_to=msg)


@app.train(WARMUP_ACTION)
def warmup(msg: Message, context: Context) -> Message:
    """FSL-SAGE warm-up: one batch of activations of the initial client model."""
    client, settings = _build_client(context)
    if not isinstance(client, FSLSageClient):
        raise ValueError(f"warm-up is part of fsl-sage, not of '{settings.algorithm}'")
    parameters, config = _request_to_numpy(msg.content, settings)
    z, y = client.warmup_batch(parameters, config)
    reply = RecordDict(
        {
            SMASHED_KEY: smashed_arrays_record(z, y, np.asarray([len(y)], dtype=np.int64)),
            METRICS_KEY: MetricRecord({"partition-id": client.partition_id, "num-examples": len(client.y)}),
        }
    )
    return Message(content=reply, reply_to=msg)


@app.train(SPLIT_STEP_ACTION)
def split_step(msg: Message, context: Context) -> Message:
    """SplitFed: apply the previous batch's gradient, send the next batch's activations."""
    client, settings = _build_client(context)
    if not isinstance(client, SplitFedClient):
        raise ValueError(f"per-batch steps are part of SplitFed, not of '{settings.algorithm}'")
    config = {**settings.to_config(), **dict(msg.content.config_records[CONFIG_KEY])}
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


def _build_client(context: Context) -> tuple[Any, RunSettings]:
    settings = RunSettings.from_run_config(context.run_config)
    torch.set_num_threads(settings.client_threads)
    partition_id = int(context.node_config["partition-id"])
    data_args = {
        "data_dir": settings.data_dir or None,
        "input_shape": required_input_shape(settings.model),
        "train_subset": settings.train_subset or None,
        "seed": settings.seed,
    }
    trainset = load_node_data(context.node_config, settings)
    split = build_split(settings, load_dataset_cached(settings.dataset, **data_args))
    client_class = get_algorithm(settings.algorithm).client_class
    return client_class(split, trainset, partition_id, context.state), settings


def _request_to_numpy(content: RecordDict, settings: RunSettings) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Flatten a request into a NumPyClient's parameter list and config dict."""
    parameters = content.array_records[ARRAYS_KEY].to_numpy_ndarrays()
    aux = content.array_records.get(AUX_KEY)
    if aux is not None:
        parameters += aux.to_numpy_ndarrays()
    config: dict[str, Any] = {**settings.to_config(), **dict(content.config_records[CONFIG_KEY])}
    config["aux-included"] = aux is not None
    return parameters, config
