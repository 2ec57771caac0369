"""Flower ClientApp entry: serves the run's algorithm on this node's data.

FSL-SAGE and CSE-FSL clients are NumPyClients served exactly as
``ClientApp(client_fn=...)`` would serve them; the FedAvg client answers
Flower's Message-API FedAvg; SplitFed has its per-batch handler
(``fsl_sage_flwr.client_replies``). The node's parts come from the run's split
network, a built-in model or the user's SplitSpec (``fsl_sage_flwr.app.run_split``).
"""

from __future__ import annotations

from typing import Any

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fsl_sage_flwr.app.config import RunSettings
from fsl_sage_flwr.app.run_split import node_split, node_trainset
from fsl_sage_flwr.client_replies import split_step_reply, train_reply
from fsl_sage_flwr.clients.privacy_floor import PrivacyFloor
from fsl_sage_flwr.clients.setup_checks import check_node_data, node_partition_id
from fsl_sage_flwr.core.devices import resolve_device
from fsl_sage_flwr.split_algorithms import split_client
from fsl_sage_flwr.transport.keys import SPLIT_STEP_ACTION

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Run one local round (or FSL-SAGE's warm-up) of the run's algorithm."""
    client, _ = build_client(context)
    return train_reply(client, msg)


@app.train(SPLIT_STEP_ACTION)
def split_step(msg: Message, context: Context) -> Message:
    """SplitFed: apply the previous batch's gradient, send the next batch's activations."""
    client, _ = build_client(context)
    return split_step_reply(client, msg)


def build_client(context: Context) -> tuple[Any, RunSettings]:
    """Build the client of the run's algorithm for the node in ``context``; return it and the settings."""
    settings = RunSettings.from_run_config(context.run_config)
    torch.set_num_threads(settings.client_threads)
    partition_id = node_partition_id(context.node_config)
    trainset = node_trainset(context, settings)
    split, num_classes = node_split(context, settings)
    # Checked on every load of the node's data, before training: a wrong setup fails in one line.
    check_node_data(split, trainset, num_classes)
    device = resolve_device(settings.device)
    # The node's own floor on upload privacy: the server's request cannot lower it.
    floor = PrivacyFloor.from_node_config(context.node_config)
    client = split_client(settings.algorithm, split, trainset, partition_id, context.state, device, privacy_floor=floor)
    return client, settings
