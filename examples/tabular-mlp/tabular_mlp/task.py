"""Data, split model and SplitSpec shared by the ServerApp and the ClientApp."""

from __future__ import annotations

import numpy as np
from flwr.app import Context
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

from fsl_sage_flwr import SplitSpec

NUM_FEATURES = 30  # the breast cancer data set's measurements per tumour
NUM_CLASSES = 2  # malignant, benign
HIDDEN = 64  # width of the client's first layer
CUT = 32  # width of the cut layer
TEST_FRACTION = 0.25  # held out; the run config's 'test-fraction' where the app has that key


def load_split(test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train/test split of the breast cancer data, standardised with train statistics.

    Returns ``(x_train, y_train, x_test, y_test)``; inputs float32, labels int64.
    """
    x, y = load_breast_cancer(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)
    scaler = StandardScaler().fit(x_train)
    return (
        scaler.transform(x_train).astype(np.float32),
        y_train.astype(np.int64),
        scaler.transform(x_test).astype(np.float32),
        y_test.astype(np.int64),
    )


def load_partition(context: Context) -> tuple[np.ndarray, np.ndarray]:
    """This node's share of the training rows, chosen by ``partition-id`` of ``num-partitions``."""
    partition_id = int(context.node_config["partition-id"])
    num_partitions = int(context.node_config["num-partitions"])
    cfg = context.run_config
    seed = int(cfg["seed"])
    x_train, y_train, _, _ = load_split(float(cfg.get("test-fraction", TEST_FRACTION)), seed)
    order = np.random.default_rng(seed).permutation(len(y_train))
    rows = np.array_split(order, num_partitions)[partition_id]
    return x_train[rows], y_train[rows]


def load_testset(context: Context) -> tuple[np.ndarray, np.ndarray]:
    """The held-out rows the server evaluates on."""
    cfg = context.run_config
    _, _, x_test, y_test = load_split(float(cfg.get("test-fraction", TEST_FRACTION)), int(cfg["seed"]))
    return x_test, y_test


def make_spec(testset: tuple[np.ndarray, np.ndarray] | None = None) -> SplitSpec:
    """The split MLP: inputs -> hidden -> cut on the client, cut -> classes on the server."""
    return SplitSpec(
        client_model=lambda: nn.Sequential(
            nn.Linear(NUM_FEATURES, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, CUT), nn.ReLU()
        ),
        server_model=lambda: nn.Sequential(nn.Linear(CUT, CUT), nn.ReLU(), nn.Linear(CUT, NUM_CLASSES)),
        aux_model=lambda: nn.Linear(CUT, NUM_CLASSES),
        cut_shape=(CUT,),
        num_classes=NUM_CLASSES,
        input_shape=(NUM_FEATURES,),  # one sample: the split checks itself with it
        testset=testset,
    )
