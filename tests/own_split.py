"""A tiny split network of the tests' own, on the digits data, named by run configs as ``own_split:...``."""

from __future__ import annotations

import numpy as np
from flwr.app import Context
from torch import nn

from fsl_sage_flwr import SplitSpec
from fsl_sage_flwr.data import load_dataset, load_partition

CUT = 16  # width of the cut layer


def make_spec() -> SplitSpec:
    """A two-layer MLP on the 8x8 digits, cut after the first layer; no test set of its own."""
    return _spec(None)


def make_spec_with_testset(context: Context) -> SplitSpec:
    """The same network, holding the digits test set; takes the Context as a spec function may."""
    return _spec(load_testset())


def _spec(testset: tuple[np.ndarray, np.ndarray] | None) -> SplitSpec:
    return SplitSpec(
        client_model=lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, CUT), nn.ReLU()),
        server_model=lambda: nn.Linear(CUT, 10),
        aux_model=lambda: nn.Linear(CUT, 10),
        cut_shape=(CUT,),
        num_classes=10,
        testset=testset,
    )


def load_node_partition(context: Context) -> tuple[np.ndarray, np.ndarray]:
    """This node's IID share of the digits training split, flattened to 64 features."""
    part = load_partition(
        "digits",
        int(context.node_config["partition-id"]),
        int(context.node_config["num-partitions"]),
        partitioning="iid",
        alpha=1.0,
        seed=0,
    )
    return part.images.reshape(len(part), -1), part.labels


def load_testset() -> tuple[np.ndarray, np.ndarray]:
    """The digits test split, flattened."""
    test = load_dataset("digits").test
    return test.images.reshape(len(test), -1), test.labels


def not_a_spec() -> int:
    """A spec function gone wrong."""
    return 42


NOT_CALLABLE = 3
