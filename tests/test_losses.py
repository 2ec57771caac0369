"""A split's loss, labels and metric: the summed form, stacked alignment, evaluation and the spec's checks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from loss_tasks import task_spec
from torch import nn

from fsl_sage_flwr import SplitLoss, SplitSpec, perplexity, token_cross_entropy
from fsl_sage_flwr.core.alignment import align_auxiliaries_stacked, align_auxiliary
from fsl_sage_flwr.core.losses import LabelSpec, evaluate_model

LOSSES = {
    "mse": (SplitLoss(F.mse_loss), 2, (8,), lambda g: torch.randn(24, 2, generator=g)),
    "tokens": (token_cross_entropy, 5, (4, 8), lambda g: torch.randint(0, 5, (24, 4), generator=g)),
}


def test_without_a_summed_form_the_sum_is_the_mean_times_the_batch():
    # Prepare
    outputs, labels = torch.randn(6, 3), torch.randn(6, 3)
    # Execute
    total = SplitLoss(F.mse_loss)(outputs, labels, reduction="sum")
    # Assert: per sample, the mean over its 3 values, summed over the 6 samples
    assert torch.allclose(total, ((outputs - labels) ** 2).mean(dim=1).sum())


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_stacked_alignment_under_another_loss_gives_what_one_by_one_gives(name):
    # Prepare: two clients' aux models and buffers, the same for both ways
    loss, outputs, cut, labels = LOSSES[name]
    torch.manual_seed(0)
    server, auxes = nn.Linear(8, outputs), [nn.Linear(8, outputs) for _ in range(2)]
    g = torch.Generator().manual_seed(1)
    buffers = [(torch.randn(24, *cut, generator=g), labels(g)) for _ in range(2)]
    one, stacked = copy.deepcopy(auxes), copy.deepcopy(auxes)
    adam = lambda models: [torch.optim.Adam(m.parameters(), lr=1e-2) for m in models]  # noqa: E731
    orders = lambda: [torch.Generator().manual_seed(k) for k in range(2)]  # noqa: E731
    # Execute
    reports = [
        align_auxiliary(a, o, server, z, y, epochs=3, batch_size=8, generator=gen, loss_fn=loss)
        for a, o, (z, y), gen in zip(one, adam(one), buffers, orders())
    ]
    stacked_reports = align_auxiliaries_stacked(
        stacked, adam(stacked), server, buffers, epochs=3, batch_size=8, generators=orders(), loss_fn=loss
    )
    # Assert: the same models, and the alignment moved them towards the server's gradients
    for a, b in zip(one, stacked):
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.allclose(p, q, atol=1e-6)
    assert [r.loss_after for r in reports] == pytest.approx([r.loss_after for r in stacked_reports], rel=1e-5)
    assert all(r.loss_after < r.loss_before for r in reports)


def test_perplexity_is_the_exponential_of_the_mean_token_loss():
    # Prepare
    torch.manual_seed(0)
    model, x, y = nn.Linear(6, 5), torch.randn(10, 4, 6), torch.randint(0, 5, (10, 4))
    # Execute
    metrics = evaluate_model(model, x, y, token_cross_entropy, perplexity, batch_size=3)
    # Assert
    with torch.no_grad():
        mean_token_loss = float(F.cross_entropy(model(x).flatten(0, 1), y.flatten()))
    assert metrics["loss"] == pytest.approx(mean_token_loss, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(mean_token_loss), rel=1e-5)


@pytest.mark.parametrize(
    ("outputs", "label_shape"),
    [(3, (2,)), (1, ())],  # a misfit torch refuses, and one it would broadcast with a warning
)
def test_a_loss_the_heads_outputs_do_not_fit_is_named_when_the_spec_is_made(outputs, label_shape):
    # Execute / Assert
    with pytest.raises(ValueError, match=rf"server_model outputs \({outputs},\) per sample, labels are"):
        SplitSpec(
            client_model=lambda: nn.Linear(8, 16),
            server_model=lambda: nn.Linear(16, outputs),
            aux_model=lambda: nn.Linear(16, outputs),
            cut_shape=(16,),
            num_classes=None,
            input_shape=(8,),
            loss=F.mse_loss,
            label_shape=label_shape,
            label_dtype="float32",
        )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"shape": (0,)}, "label_shape must be positive"),
        ({"dtype": "float64"}, "label dtype must be one of"),
        ({"dtype": "int64", "num_classes": None}, "integer labels need num_classes >= 2"),
    ],
)
def test_a_label_spec_is_checked_when_made(fields, reason):
    with pytest.raises(ValueError, match=reason):
        LabelSpec(**{"num_classes": 3, **fields})


def test_a_spec_with_float_labels_reports_no_accuracy():
    # Prepare / Execute
    objective = task_spec("multilabel").objective
    # Assert
    assert objective.metric is None and objective.num_classes is None
    assert objective.labels == LabelSpec((3,), "float32", None)
