"""A node's setup checked before it trains: its partition id, its labels, and inputs its client model takes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from fsl_sage_flwr.core.models import SplitModel
from fsl_sage_flwr.core.setup_checks import SetupError, check_client_output, check_input_shape, check_labels
from fsl_sage_flwr.data import ArrayDataset
from fsl_sage_flwr.transport.keys import PARTITION_ID_KEY


def node_partition_id(node_config: Mapping[str, Any]) -> int:
    """The node's ``partition-id``; raise SetupError (identity) when it is missing or not an integer."""
    if PARTITION_ID_KEY not in node_config:
        raise SetupError(
            "identity",
            f"node config has no '{PARTITION_ID_KEY}': start the SuperNode with "
            f'--node-config "{PARTITION_ID_KEY}=<n>"',
        )
    value = node_config[PARTITION_ID_KEY]
    try:
        partition_id = int(value)
    except (TypeError, ValueError):
        raise SetupError("identity", f"node config '{PARTITION_ID_KEY}' must be an integer, got {value!r}") from None
    if isinstance(value, float) and value != partition_id:
        raise SetupError("identity", f"node config '{PARTITION_ID_KEY}' must be an integer, got {value!r}")
    return partition_id


def check_node_data(
    split: SplitModel,
    trainset: ArrayDataset,
    num_classes: int,
    input_shape: tuple[int, ...] | None = None,
) -> None:
    """Raise SetupError, in one line naming the cause, unless this node's data fits the split.

    Run once per load of the node's data, before any training: labels must lie
    in ``[0, num_classes)`` (or fit ``split.objective``'s label spec); inputs must have ``input_shape`` per sample (when
    given) and the client model must take two of them and return ``cut_shape``.

    Parameters
    ----------
    split : SplitModel
        The parts this node holds; only ``client`` and ``cut_shape`` are used.
    trainset : ArrayDataset
        The node's training data.
    num_classes : int
        The run's number of classes.
    input_shape : tuple[int, ...], optional
        One sample's expected shape; without it, the client model decides.
    """
    check_labels(trainset.labels, split.labels if split.labels is not None else num_classes)
    if input_shape is not None:
        check_input_shape(trainset.images.shape[1:], input_shape)
    check_client_output(split.client, torch.from_numpy(trainset.images[:2]), split.cut_shape)
