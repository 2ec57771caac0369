"""Three tiny split tasks beyond one class per sample: per-token classes, multi-label, regression."""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from torch import nn

from fsl_sage_flwr import SplitSpec, perplexity, token_cross_entropy

TOKENS, FEATURES, VOCAB = 4, 6, 5  # the per-token task: 4 tokens of 6 features, 5 classes each
WIDTH = 8  # features per sample of the other tasks
SAMPLES = 64  # per node, and in the test set


def task_data(task: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``SAMPLES`` inputs and labels of ``task``: labels follow from the inputs, so a model can learn them."""
    rng = np.random.default_rng(seed)
    if task == "tokens":
        x = rng.normal(size=(SAMPLES, TOKENS, FEATURES)).astype(np.float32)
        return x, x[:, :, :VOCAB].argmax(axis=2).astype(np.int64)
    x = rng.normal(size=(SAMPLES, WIDTH)).astype(np.float32)
    if task == "multilabel":
        return x, (x[:, :3] > 0).astype(np.float32)
    weights = np.random.default_rng(99).normal(size=(WIDTH, 2)).astype(np.float32)
    return x, x @ weights


def task_spec(task: str) -> SplitSpec:
    """The split of ``task``, holding its test set."""
    testset = task_data(task, seed=1000)
    if task == "tokens":
        return SplitSpec(
            client_model=lambda: nn.Sequential(nn.Linear(FEATURES, 16), nn.ReLU()),
            server_model=lambda: nn.Linear(16, VOCAB),
            aux_model=lambda: nn.Linear(16, VOCAB),
            cut_shape=(TOKENS, 16),
            num_classes=VOCAB,
            testset=testset,
            loss=token_cross_entropy,
            label_shape=(TOKENS,),
            metric=perplexity,
        )
    outputs = 3 if task == "multilabel" else 2
    return SplitSpec(
        client_model=lambda: nn.Sequential(nn.Linear(WIDTH, 16), nn.ReLU()),
        server_model=lambda: nn.Linear(16, outputs),
        aux_model=lambda: nn.Linear(16, outputs),
        cut_shape=(16,),
        num_classes=None,
        testset=testset,
        loss=F.binary_cross_entropy_with_logits if task == "multilabel" else F.mse_loss,
        label_shape=(outputs,),
        label_dtype="float32",
    )
